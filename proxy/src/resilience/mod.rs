//! Resilience: retries within a budget, outlier ejection and circuit breakers, decided once
//! for the node and seen by every worker.
//!
//! - [`policy`]: an upstream's settings, compiled from its `retries`, `health_checks` and
//!   `circuit_breaker`.
//! - [`state`]: the live state every worker reads and reports to (flags and counters), carried
//!   across config changes for the targets that stay.
//! - [`attempt`]: one try on one target; its guard reports the outcome exactly once.
//! - [`decide`]: the decisions, made by the health thread ([`HealthThread`]) a few times a
//!   second, and the per-worker retry budget.

pub mod attempt;
pub mod decide;
pub mod policy;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::snapshot::Snapshot;

/// The thread that makes the node's health decisions. It follows the snapshots the workers
/// serve (sent to it by whoever publishes them) and stops when dropped.
pub struct HealthThread {
    tx: Sender<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl HealthThread {
    /// Starts the thread (named `health`) on `first`.
    pub fn start(first: Arc<Snapshot>) -> std::io::Result<HealthThread> {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("health".into()).spawn(move || run(first, rx, &flag))?;
        Ok(HealthThread { tx, stop, handle: Some(handle) })
    }

    /// The snapshot the workers now serve.
    pub fn follow(&self, s: Arc<Snapshot>) {
        let _ = self.tx.send(s);
    }

    /// A sender to hand to the publisher.
    pub fn sender(&self) -> Sender<Arc<Snapshot>> {
        self.tx.clone()
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(mut current: Arc<Snapshot>, rx: Receiver<Arc<Snapshot>>, stop: &AtomicBool) {
    let mut books = decide::Books::default();
    let mut rounds: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(decide::TICK) {
            Ok(s) => {
                current = s;
                // Only the newest matters.
                while let Ok(s) = rx.try_recv() {
                    current = s;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        for u in current.upstreams.values() {
            if u.resilience.watches() {
                decide::decide(&u.id, &u.resilience, &u.health, now, &mut books);
            }
        }
        rounds += 1;
        if rounds.is_multiple_of(200) {
            books.prune();
        }
    }
}
