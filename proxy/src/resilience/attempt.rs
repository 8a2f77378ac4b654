//! One try of a request on one target, and the report of how it went: to the worker's
//! balancer, to the target's health and to the upstream's breaker, exactly once, by a guard.
//!
//! Hot path: a few relaxed atomics, and only on upstreams that watch outcomes.

use std::time::Duration;

use monoio::time::Instant;

use super::policy::Settings;
use super::state::UpstreamState;
use crate::lb::LbKind;
use crate::worker::SharedLb;

/// How an attempt failed, as far as the upstream is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// No connection.
    Connect,
    /// A deadline ran out (connecting or waiting for the answer).
    Timeout,
    /// The connection broke, or the upstream spoke nonsense, before its answer's head (after
    /// it: see [`Attempt::ended`]).
    Reset,
}

/// An attempt in flight. Dropped without [`Attempt::answered`] or [`Attempt::failed`], it
/// only gives back its balancer slot (and a half-open breaker's trial permit): the request
/// ended for a reason that is not the target's (the client went away).
pub struct Attempt<'a> {
    lb: &'a SharedLb,
    p2c: bool,
    target: usize,
    started: Instant,
    state: &'a UpstreamState,
    settings: &'a Settings,
    worker: usize,
    /// A request the half-open breaker let through to test the upstream.
    trial: bool,
    settled: bool,
}

impl<'a> Attempt<'a> {
    /// Starts an attempt on `target` at `started` (counted as active by the balancer).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        lb: &'a SharedLb,
        kind: &LbKind,
        target: usize,
        state: &'a UpstreamState,
        settings: &'a Settings,
        worker: usize,
        trial: bool,
        started: Instant,
    ) -> Self {
        lb.borrow_mut().start(target);
        Attempt {
            lb,
            p2c: matches!(kind, LbKind::P2cEwma),
            target,
            started,
            state,
            settings,
            worker,
            trial,
            settled: false,
        }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The target answered with `status` (its head arrived after `latency`). Returns whether
    /// the answer counts as a failure for the target's health or the breaker.
    pub fn answered(mut self, status: u16, latency: Duration) -> bool {
        let passive = self.settings.passive.as_ref().is_some_and(|p| p.failure_statuses.contains(status));
        let breaker = self.settings.breaker.as_ref().is_some_and(|b| b.failure_statuses.contains(status));
        self.settle(Some(latency), Some((passive, breaker)));
        passive || breaker
    }

    /// The target's answer (`status`, its head after `latency`) was relayed to its end:
    /// `broke` when the upstream failed on the way (a malformed head, a reset or a stall in the
    /// body), which counts as a failure whatever the status.
    pub fn ended(mut self, status: u16, latency: Duration, broke: bool) {
        let passive = broke || self.settings.passive.as_ref().is_some_and(|p| p.failure_statuses.contains(status));
        let breaker = broke || self.settings.breaker.as_ref().is_some_and(|b| b.failure_statuses.contains(status));
        self.settle(Some(latency), Some((passive, breaker)));
    }

    /// The attempt failed on the upstream's side.
    pub fn failed(mut self, _how: Failed) {
        self.settle(None, Some((true, true)));
    }

    /// `health`: (failed for the target's health, failed for the breaker); `None` reports
    /// nothing but to the balancer.
    fn settle(&mut self, latency: Option<Duration>, health: Option<(bool, bool)>) {
        if self.settled {
            return;
        }
        self.settled = true;
        if self.p2c && health.is_some() {
            // A failure counts against the target's latency average; an abandoned attempt
            // does not.
            self.lb.borrow_mut().finish(self.target, latency, Instant::now().into_std());
        } else {
            self.lb.borrow_mut().release(self.target);
        }
        let Some((passive, breaker)) = health else {
            if self.trial {
                self.state.breaker.give_permit();
            }
            return;
        };
        if self.settings.passive.is_some() {
            self.state.targets[self.target].report(passive);
        }
        if self.settings.breaker.is_some() {
            let b = &self.state.breaker;
            b.report(self.worker, breaker);
            if self.trial {
                let c = if breaker { &b.trial_failed } else { &b.trial_ok };
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.settle(None, None);
    }
}
