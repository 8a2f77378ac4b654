//! The admin thread's state: the store, the current document, the compiled snapshot, and the
//! rollout of every accepted change to every worker.
//!
//! Order of a write: validate (compile) -> commit (one synced batch, new revision) -> publish
//! the snapshot to every worker -> wait until every worker acknowledged it -> answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringway_proxy::{Ack, ConfigSpec, Control, Invalidate, Snapshot};
use ringway_runtime::MailboxSender;
use ringway_store::{Change, ConfigStore};
use serde::Serialize;

/// Resource kinds the store holds, as named in the API and the document.
pub const UPSTREAMS: &str = "upstreams";
pub const ROUTES: &str = "routes";
pub const CONSUMERS: &str = "consumers";
pub const CERTIFICATES: &str = "certificates";
pub const PROTOS: &str = "protos";
/// The global policies: one resource of this kind, with the id [`GLOBAL_ID`].
pub const GLOBAL: &str = "global_policies";
pub const GLOBAL_ID: &str = "default";
/// Settings of the document besides resources: one resource each, of this kind.
pub const SETTINGS: &str = "settings";
pub const ACCESS_LOG: &str = "access_log";
pub const LOG_SHIPPING: &str = "log_shipping";
pub const TRACING: &str = "tracing";
pub const TRUSTED_PROXIES: &str = "trusted_proxies";
pub const TLS: &str = "tls";

pub use crate::changes::*;
pub use crate::error::ApiError;

/// The most invalidations relayed in one batch.
pub const MAX_RELAY_BATCH: usize = 4096;

/// `first` and what else is queued in `rx` (up to [`MAX_RELAY_BATCH`]), each (route, path)
/// once: what one relay sends. A pair sent by several workers is marked as from none of them.
pub fn coalesce(first: Invalidate, rx: &Receiver<Invalidate>) -> Vec<Invalidate> {
    let mut batch = vec![first];
    while batch.len() < MAX_RELAY_BATCH {
        match rx.try_recv() {
            Ok(i) => batch.push(i),
            Err(_) => break,
        }
    }
    batch.sort_unstable_by(|a, b| (&a.route, &a.path).cmp(&(&b.route, &b.path)));
    batch.dedup_by(|later, kept| {
        let same = later.route == kept.route && later.path == kept.path;
        if same && later.from != kept.from {
            kept.from = usize::MAX;
        }
        same
    });
    batch
}

/// Per-worker facts for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub id: usize,
    pub cpu: Option<usize>,
    pub driver: &'static str,
    pub revision: u64,
    /// Rate-limit keys the worker tracks (capped by --rate-limit-keys).
    pub rate_limit_keys: usize,
    /// Responses in the worker's cache partition.
    pub cache_entries: usize,
}

/// Everything the admin thread owns.
pub struct AdminState {
    store: Box<dyn ConfigStore>,
    spec: ConfigSpec,
    revision: u64,
    /// The snapshot of `spec` at `revision`, which the next change is compiled from.
    current: Arc<Snapshot>,
    workers: Vec<MailboxSender<Control>>,
    acks: Receiver<Ack>,
    pub worker_status: Vec<WorkerStatus>,
    /// The node's key for consumers' HMAC secrets (see `crate::secrets`).
    pub secrets: crate::secrets::SecretBox,
    pub tls_listen: crate::tls_listen::TlsListen,
    pub rollout_timeout: Duration,
    /// How long the last rollout took from commit to the last acknowledgement.
    pub last_rollout: Option<Duration>,
    /// The latest published snapshots. Holding them here makes the admin thread, not a
    /// worker, free a superseded snapshot (tens of thousands of allocations with many routes).
    published: std::collections::VecDeque<Arc<Snapshot>>,
    /// The last purge order each worker finished, and what it removed.
    purged: Vec<(u64, usize)>,
    /// The last order id handed out (purges and reports share the sequence).
    next_purge: u64,
    /// The node's health decisions (ejections, breakers), told of every rollout; it stops
    /// with the admin thread.
    health: Option<ringway_proxy::resilience::HealthThread>,
}

impl AdminState {
    pub fn new(
        store: Box<dyn ConfigStore>,
        spec: ConfigSpec,
        current: Arc<Snapshot>,
        workers: Vec<MailboxSender<Control>>,
        acks: Receiver<Ack>,
        worker_status: Vec<WorkerStatus>,
    ) -> Self {
        AdminState {
            secrets: crate::secrets::SecretBox::ephemeral(),
            tls_listen: Default::default(),
            store,
            spec,
            revision: current.revision,
            current,
            workers,
            acks,
            worker_status,
            rollout_timeout: Duration::from_secs(10),
            last_rollout: None,
            published: std::collections::VecDeque::new(),
            purged: Vec::new(),
            next_purge: 0,
            health: None,
        }
    }

    /// The node's view of upstream `id`'s health (`None`: no health thread, or no answer).
    pub fn health_report(&self, id: &str) -> Option<ringway_proxy::resilience::HealthReport> {
        self.health.as_ref()?.report(id)
    }

    /// Starts the thread that makes the node's health decisions on the current snapshot.
    pub fn start_health(&mut self) -> std::io::Result<()> {
        self.health = Some(ringway_proxy::resilience::HealthThread::start(self.current.clone())?);
        Ok(())
    }

    pub fn spec(&self) -> &ConfigSpec {
        &self.spec
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn store(&self) -> &dyn ConfigStore {
        &*self.store
    }

    /// Validates, commits and rolls out the document `new`; answers once every worker serves
    /// it.
    pub fn apply(&mut self, new: ConfigSpec, summary: String) -> Result<(u64, Diff), ApiError> {
        let changes = changes_between(&self.spec, new);
        self.apply_changes(changes, summary)
    }

    /// Validates, commits and rolls out `changes`, all or nothing; answers once every worker
    /// serves them. The work grows with the changes, not with the size of the configuration.
    pub fn apply_changes(&mut self, changes: Vec<ResourceChange>, summary: String) -> Result<(u64, Diff), ApiError> {
        let (changes, d, ops) = effective(&self.spec, changes);
        let mut next = self
            .current
            .edit(changes.iter().map(ResourceChange::edit), self.revision + 1)
            .map_err(ApiError::invalid)?;
        if ops.is_empty() {
            return Ok((self.revision, d));
        }
        let listens = (self.current.tls_settings.listen.as_deref(), next.tls_settings.listen.as_deref());
        let rebind = self.tls_listen.prepare(listens.0, listens.1, self.workers.len())?;
        let rev = self
            .store
            .commit(Change { ops, summary })
            .map_err(|e| ApiError::new(500, "store_failed", format!("the change was not stored: {e}")))?;
        next.revision = rev;
        for c in changes {
            c.apply_to(&mut self.spec);
        }
        self.revision = rev;
        self.current = Arc::new(next);
        if let Some(r) = rebind {
            self.tls_listen.hand_over(r, &self.workers);
        }
        self.rollout(self.current.clone())?;
        Ok((rev, d))
    }

    /// Validates the document `new` without changing anything; answers its diff.
    pub fn dry_run(&self, new: ConfigSpec) -> Result<Diff, ApiError> {
        let (changes, d, _) = effective(&self.spec, changes_between(&self.spec, new));
        self.current.edit(changes.iter().map(ResourceChange::edit), self.revision + 1).map_err(ApiError::invalid)?;
        Ok(d)
    }

    /// The snapshot workers serve (or are being given).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    fn note(&mut self, a: Ack) {
        if let Some(w) = self.worker_status.get_mut(a.worker) {
            w.revision = w.revision.max(a.revision);
            w.rate_limit_keys = a.rate_limit_keys;
            w.cache_entries = a.cache_entries;
        }
        if self.purged.len() <= a.worker {
            self.purged.resize(a.worker + 1, (0, 0));
        }
        if a.purged > self.purged[a.worker].0 {
            self.purged[a.worker] = (a.purged, a.removed);
        }
    }

    fn drain_acks(&mut self) {
        while let Ok(a) = self.acks.try_recv() {
            self.note(a);
        }
    }

    /// Removes cached responses of `route` at `path` or under `prefix` on every worker;
    /// answers once every worker has, with how many entries went.
    pub fn purge(&mut self, route: &str, path: Option<&str>, prefix: Option<&str>) -> Result<usize, ApiError> {
        let id = self.send_purge(route, path, prefix);
        self.wait_orders(id)
    }

    /// Sends every worker one batch of invalidations (workers' own, after successful unsafe
    /// requests), without waiting: no worker acknowledges them, so nothing piles up unread
    /// when no admin call comes.
    pub fn relay_invalidations(&mut self, batch: Vec<Invalidate>) {
        if batch.is_empty() {
            return;
        }
        let batch: Arc<[Invalidate]> = batch.into();
        for w in &self.workers {
            let _ = w.send(Control::Invalidate(batch.clone()));
        }
    }

    /// Asks every worker for its current figures (for the status API).
    pub fn report(&mut self) -> Result<usize, ApiError> {
        let id = self.send_order(Control::Report);
        self.wait_orders(id)
    }

    fn send_purge(&mut self, route: &str, path: Option<&str>, prefix: Option<&str>) -> u64 {
        self.send_order(|id| {
            Control::Purge(ringway_proxy::Purge {
                id,
                route: route.to_string(),
                path: path.map(String::from),
                prefix: prefix.map(String::from),
            })
        })
    }

    /// Sends every worker the order `make(id)` under a new order id; returns the id.
    fn send_order(&mut self, make: impl Fn(u64) -> Control) -> u64 {
        self.next_purge += 1;
        for w in &self.workers {
            let _ = w.send(make(self.next_purge));
        }
        self.next_purge
    }

    /// Waits until every worker acknowledged order `id`; answers the entries purges removed.
    fn wait_orders(&mut self, id: u64) -> Result<usize, ApiError> {
        let deadline = Instant::now() + self.rollout_timeout;
        let ids: Vec<usize> = self.worker_status.iter().map(|w| w.id).collect();
        loop {
            self.drain_acks();
            let done = |p: &Vec<(u64, usize)>| ids.iter().all(|i| p.get(*i).is_some_and(|x| x.0 >= id));
            if done(&self.purged) {
                return Ok(ids.iter().map(|i| self.purged[*i].1).sum());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(500, "purge_incomplete", "not every worker finished the purge in time"));
            }
            if let Ok(a) = self.acks.recv_timeout(left) {
                self.note(a);
            }
        }
    }

    /// Publishes a snapshot to every worker and waits for every acknowledgement.
    fn rollout(&mut self, snapshot: Arc<Snapshot>) -> Result<(), ApiError> {
        let rev = snapshot.revision;
        let started = Instant::now();
        for w in &self.workers {
            let _ = w.send(Control::Apply(snapshot.clone()));
        }
        if let Some(h) = &self.health {
            h.follow(snapshot.clone());
        }
        self.published.push_back(snapshot);
        while self.published.len() > 3 {
            // Workers moved past it (they ack the newest): usually the last reference.
            self.published.pop_front();
        }
        let deadline = started + self.rollout_timeout;
        loop {
            self.drain_acks();
            if self.worker_status.iter().all(|w| w.revision >= rev) {
                self.last_rollout = Some(started.elapsed());
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(
                    500,
                    "rollout_incomplete",
                    format!(
                        "revision {rev} is stored but not every worker acknowledged it within {:?}",
                        self.rollout_timeout
                    ),
                ));
            }
            if let Ok(a) = self.acks.recv_timeout(left) {
                self.note(a);
            }
        }
    }

    /// Refreshes worker revisions from pending acknowledgements.
    pub fn refresh(&mut self) {
        self.drain_acks();
    }

    /// Orders every worker to drain.
    pub fn drain(&self, timeout: Duration) {
        for w in &self.workers {
            let _ = w.send(Control::Drain(timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_proxy::{run_worker, WorkerSetup};
    use ringway_runtime::{mailbox, spawn_workers, DriverChoice, WorkerOptions};

    #[test]
    fn relayed_invalidations_leave_no_acknowledgements_behind() {
        let count = 2;
        let spec = ConfigSpec::default();
        let snapshot = Arc::new(Snapshot::compile(&spec, 0).expect("empty configuration"));
        let (_, listeners) = crate::listen::bind_listeners("127.0.0.1:0".parse().unwrap(), count).unwrap();
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<Ack>();
        let (inv_tx, _inv_rx) = crossbeam_channel::unbounded();
        let (setup_tx, setup_rx) = crossbeam_channel::bounded::<WorkerSetup>(count);
        let mut senders = Vec::new();
        for listener in listeners {
            let (tx, rx) = mailbox();
            senders.push(tx);
            let _ = setup_tx.send(WorkerSetup {
                listener,
                tls_listener: None,
                mailbox: rx,
                snapshot: snapshot.clone(),
                limits: Default::default(),
                acks: ack_tx.clone(),
                seed: 1,
                workers: count,
                cache_bytes: 1 << 20,
                limit_keys: 1000,
                limit_bank: Arc::new(ringway_policy::limits::LimitBank::new(1024)),
                invalidations: inv_tx.clone(),
                caps: std::sync::Arc::new(ringway_proxy::ConnectionCaps::new(1000, 0)),
                metrics: ringway_proxy::metrics::WorkerMetrics::detached(0),
                log: None,
                traces: None,
                identity: None,
                keys: Default::default(),
                clock: ringway_proxy::clock::Clock::real(),
            });
        }
        let opts = WorkerOptions { count, driver: DriverChoice::Auto, pin: false, defer_taskrun: false };
        let workers = spawn_workers(opts, move |ctx| {
            let setup = setup_rx.try_recv().ok();
            async move {
                if let Some(setup) = setup {
                    run_worker(ctx, setup).await;
                }
            }
        })
        .unwrap();
        let status = workers
            .contexts()
            .iter()
            .map(|c| WorkerStatus {
                id: c.id,
                cpu: None,
                driver: c.driver.as_str(),
                revision: 0,
                rate_limit_keys: 0,
                cache_entries: 0,
            })
            .collect();
        for _ in 0..count {
            ack_rx.recv_timeout(Duration::from_secs(10)).expect("a worker started");
        }
        let store = Box::new(ringway_store::MemoryStore::new());
        let mut state = AdminState::new(store, spec, snapshot, senders, ack_rx.clone(), status);
        // A stream of invalidations and no admin call: nothing may pile up unread.
        for i in 0..5000 {
            state.relay_invalidations(vec![Invalidate { route: "r".into(), path: format!("/p/{i}"), from: 0 }]);
        }
        std::thread::sleep(Duration::from_millis(500));
        let pending = ack_rx.len();
        state.drain(Duration::ZERO);
        workers.join();
        assert!(pending <= count, "{pending} acknowledgements waiting to be read");
    }

    #[test]
    fn queued_invalidations_go_out_as_one_batch_each_pair_once() {
        let inv = |route: &str, path: &str, from| Invalidate { route: route.into(), path: path.into(), from };
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in [inv("r", "/b", 1), inv("r", "/a", 0), inv("s", "/a", 0), inv("r", "/b", 1), inv("r", "/a", 1)] {
            tx.send(i).unwrap();
        }
        let batch = coalesce(inv("r", "/a", 0), &rx);
        assert_eq!(batch, vec![inv("r", "/a", usize::MAX), inv("r", "/b", 1), inv("s", "/a", 0)]);
        assert!(rx.is_empty());
        for i in 0..MAX_RELAY_BATCH + 10 {
            tx.send(inv("r", &format!("/{i}"), 0)).unwrap();
        }
        let first = rx.recv().unwrap();
        assert_eq!(coalesce(first, &rx).len(), MAX_RELAY_BATCH);
        assert_eq!(rx.len(), 10, "the rest waits for the next relay");
    }
}
