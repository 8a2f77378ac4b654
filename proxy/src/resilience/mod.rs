//! Resilience: retries within a budget, outlier ejection and circuit breakers, decided once
//! for the node and seen by every worker.
//!
//! - [`policy`]: an upstream's settings, compiled from its `retries`, `health_checks` and
//!   `circuit_breaker`.
//! - [`state`]: the live state every worker reads and reports to (flags and counters), carried
//!   across config changes for the targets that stay.
//! - [`attempt`]: one try on one target; its guard reports the outcome exactly once.
//! - [`decide`]: the decisions, made by the health thread ([`HealthThread`]) 20 times a
//!   second, which also runs the probes ([`crate::client::probe`]).
//! - [`budget`]: the retry budget each worker keeps per upstream.

pub mod attempt;
pub mod budget;
pub mod decide;
pub mod policy;
pub mod state;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use self::decide::Books;
use self::policy::Active;
use self::state::{Decision, TargetState, UpstreamState};
use crate::snapshot::Snapshot;

/// What the health thread is asked.
enum Msg {
    /// The snapshot the workers now serve.
    Follow(Arc<Snapshot>),
    /// The health of an upstream, for the admin API.
    Report(String, Sender<Option<HealthReport>>),
}

/// The thread that makes the node's health decisions and runs its probes (one per target per
/// interval for the node, never on a worker). It follows the snapshots the workers serve
/// (sent to it by whoever publishes them) and stops when dropped.
pub struct HealthThread {
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl HealthThread {
    /// Starts the thread (named `health`) on `first`.
    pub fn start(first: Arc<Snapshot>) -> std::io::Result<HealthThread> {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = ringway_runtime::spawn_background("health", move || run(first, rx, &flag))?;
        Ok(HealthThread { tx, stop, handle: Some(handle) })
    }

    /// The snapshot the workers now serve.
    pub fn follow(&self, s: Arc<Snapshot>) {
        let _ = self.tx.send(Msg::Follow(s));
    }

    /// The health of upstream `id` as the node sees it now (`None`: no such upstream).
    pub fn report(&self, id: &str) -> Option<HealthReport> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Report(id.to_string(), tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(2)).ok().flatten()
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A closed channel ends the thread's wait for messages at once.
        let (dead, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An upstream's health, for `GET /admin/v1/upstreams/{id}/health`.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub upstream: String,
    /// `closed`, `open` or `half_open` (`null`: no breaker).
    pub circuit_breaker: Option<&'static str>,
    pub breaker_history: Vec<Decision>,
    pub targets: Vec<TargetReport>,
}

/// One target's health.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: SocketAddr,
    /// `healthy`, `ejected`, `unhealthy` (or `ejected,unhealthy`).
    pub state: String,
    /// Failures in a row from real traffic (outlier detection).
    pub failures_in_a_row: u32,
    /// Ejections in a row (each lasts longer).
    pub ejections: u32,
    pub probe_successes_in_a_row: u32,
    pub probe_failures_in_a_row: u32,
    /// What the last probe said (`ok`, or why it failed).
    pub last_probe: Option<String>,
    pub history: Vec<Decision>,
}

fn report(current: &Snapshot, id: &str, books: &mut Books) -> Option<HealthReport> {
    let u = current.upstreams.get(id)?;
    let b = &u.health.breaker;
    Some(HealthReport {
        upstream: id.to_string(),
        circuit_breaker: u.resilience.breaker.as_ref().map(|_| b.mode().as_str()),
        breaker_history: books.breaker_history(b),
        targets: u
            .health
            .targets
            .iter()
            .map(|t| {
                let state = match (t.is_ejected(), t.is_unhealthy()) {
                    (false, false) => "healthy",
                    (true, false) => "ejected",
                    (false, true) => "unhealthy",
                    (true, true) => "ejected,unhealthy",
                };
                let book = books.target_book(t);
                TargetReport {
                    target: t.addr,
                    state: state.into(),
                    failures_in_a_row: t.consecutive(),
                    ejections: book.ejections,
                    probe_successes_in_a_row: book.probe_ok,
                    probe_failures_in_a_row: book.probe_failed,
                    last_probe: book.last_probe.clone(),
                    history: book.history.iter().cloned().collect(),
                }
            })
            .collect(),
    })
}

/// A probe's result, waiting for the next round.
struct Probed {
    upstream: String,
    target: Arc<TargetState>,
    outcome: Result<(), String>,
    healthy_after: u32,
    unhealthy_after: u32,
}

fn run(first: Arc<Snapshot>, rx: Receiver<Msg>, stop: &AtomicBool) {
    let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("health thread: no runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut current = first;
        let mut books = Books::default();
        let done: Rc<RefCell<Vec<Probed>>> = Rc::default();
        let mut rounds: u64 = 0;
        let mut next = None;
        while !stop.load(Ordering::Relaxed) {
            while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
                match m {
                    Msg::Follow(s) => {
                        current = s;
                        for u in current.upstreams.values() {
                            decide::reconcile(&u.resilience, &u.health, &mut books);
                        }
                    }
                    Msg::Report(id, reply) => {
                        let _ = reply.send(report(&current, &id, &mut books));
                    }
                }
            }
            let now = Instant::now();
            for p in done.borrow_mut().drain(..) {
                // Only for a target that is still probed (the config may have changed meanwhile).
                let live = current.upstreams.get(&p.upstream).is_some_and(|u| {
                    u.resilience.active.is_some() && u.health.targets.iter().any(|t| Arc::ptr_eq(t, &p.target))
                });
                let book = books.target_book(&p.target);
                book.probing = false;
                if live {
                    decide::probed(&p.upstream, &p.target, p.outcome, (p.healthy_after, p.unhealthy_after), &mut books);
                }
            }
            for u in current.upstreams.values() {
                if !u.resilience.watches() {
                    continue;
                }
                decide::decide(&u.id, &u.resilience, &u.health, now, &mut books);
                if let Some(a) = &u.resilience.active {
                    start_probes(&u.id, a, &u.health, now, &mut books, &done);
                }
            }
            rounds += 1;
            if rounds.is_multiple_of(200) {
                books.prune();
            }
            if current.upstreams.values().any(|u| u.resilience.watches()) {
                monoio::time::sleep(decide::TICK).await;
            } else {
                // Nothing to watch: the thread waits for a message (a new configuration, a
                // report) instead of ticking; a wakeup costs a busy core a switch and back.
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => next = Some(m),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    });
}

/// Starts a probe of every target of the upstream whose probe is due (and none is under way).
fn start_probes(
    id: &str,
    a: &Active,
    state: &UpstreamState,
    now: Instant,
    books: &mut Books,
    done: &Rc<RefCell<Vec<Probed>>>,
) {
    for t in state.targets.iter() {
        let book = books.target_book(t);
        if book.probing || book.probe_due.is_some_and(|d| d > now) {
            continue;
        }
        book.probing = true;
        // Due every interval from the first probe, whatever the rounds' timing (a late round
        // does not push every later probe back).
        book.probe_due = Some(match book.probe_due {
            Some(d) if d + a.interval > now => d + a.interval,
            _ => now + a.interval,
        });
        let (target, active, done, upstream) = (t.clone(), a.clone(), done.clone(), id.to_string());
        monoio::spawn(async move {
            let outcome = crate::client::probe(target.addr, &active).await;
            done.borrow_mut().push(Probed {
                upstream,
                target,
                outcome,
                healthy_after: active.healthy_after,
                unhealthy_after: active.unhealthy_after,
            });
        });
    }
}

/// Appends the health of every upstream that checks it to a Prometheus exposition: whether each
/// target is in rotation, ejected or unhealthy, how often it was taken out, and where each
/// breaker stands. Read from the shared state (no lock, no worker involved).
pub fn render_metrics(out: &mut String, snapshot: &Snapshot) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let esc = crate::metrics::Esc;
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let watched: Vec<_> = snapshot.upstreams.values().filter(|u| u.resilience.checks_health()).collect();
    type Figure = fn(&TargetState) -> u64;
    let per_target: [(&str, &str, &str, Figure); 5] = [
        ("ringway_upstream_target_up", "gauge", "1 when the target is in rotation, by upstream and target.", |t| {
            u64::from(t.usable())
        }),
        ("ringway_upstream_target_ejected", "gauge", "1 when outlier detection ejected the target.", |t| {
            u64::from(t.is_ejected())
        }),
        ("ringway_upstream_target_unhealthy", "gauge", "1 when probes took the target out.", |t| {
            u64::from(t.is_unhealthy())
        }),
        ("ringway_upstream_ejections_total", "counter", "Times outlier detection ejected the target.", |t| {
            t.ejections_total.load(Relaxed)
        }),
        ("ringway_upstream_unhealthy_total", "counter", "Times probes took the target out.", |t| {
            t.unhealthy_total.load(Relaxed)
        }),
    ];
    for (name, kind, help, f) in per_target {
        header(out, name, kind, help);
        for u in &watched {
            for t in u.health.targets.iter() {
                let _ = writeln!(out, "{name}{{upstream=\"{}\",target=\"{}\"}} {}", esc(&u.id), t.addr, f(t));
            }
        }
    }
    header(out, "ringway_circuit_breaker_state", "gauge", "1 for the state each upstream's breaker is in.");
    let breakers: Vec<_> = snapshot.upstreams.values().filter(|u| u.resilience.breaker.is_some()).collect();
    for u in &breakers {
        let now = u.health.breaker.mode().as_str();
        for s in ["closed", "open", "half_open"] {
            let v = u64::from(s == now);
            let _ = writeln!(out, "ringway_circuit_breaker_state{{upstream=\"{}\",state=\"{s}\"}} {v}", esc(&u.id));
        }
    }
    header(out, "ringway_circuit_breaker_opened_total", "counter", "Times each upstream's breaker opened.");
    for u in &breakers {
        let n = u.health.breaker.opened_total.load(Relaxed);
        let _ = writeln!(out, "ringway_circuit_breaker_opened_total{{upstream=\"{}\"}} {n}", esc(&u.id));
    }
}
