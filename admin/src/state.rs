//! The admin thread's state: the store, the current document, the compiled snapshot, and the
//! rollout of every accepted change to every worker.
//!
//! Order of a write: validate (compile) -> commit (one synced batch, new revision) -> publish
//! the snapshot to every worker -> wait until every worker acknowledged it -> answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ringway_policy::{ConfigError, ConfigErrors};
use ringway_proxy::{Ack, ConfigSpec, Control, Snapshot};
use ringway_runtime::MailboxSender;
use ringway_store::{Change, ConfigStore, Op, StoredState};
use serde::Serialize;

/// Resource kinds the store holds, as named in the API and the document.
pub const UPSTREAMS: &str = "upstreams";
pub const ROUTES: &str = "routes";

/// An answer the API turns into an HTTP error.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<ConfigError>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), problems: Vec::new() }
    }

    pub fn invalid(errors: ConfigErrors) -> Self {
        ApiError {
            status: 400,
            code: "invalid_config",
            message: format!("{} problem(s) in the configuration", errors.0.len()),
            problems: errors.0,
        }
    }
}

/// What a change adds, changes and removes, per kind.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct KindDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub upstreams: KindDiff,
    pub routes: KindDiff,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

fn diff_maps<T: PartialEq + Serialize>(
    kind: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    ops: &mut Vec<Op>,
) -> KindDiff {
    let mut d = KindDiff::default();
    for (id, v) in new {
        match old.get(id) {
            Some(o) if o == v => continue,
            Some(_) => d.changed.push(id.clone()),
            None => d.added.push(id.clone()),
        }
        ops.push(Op::Put { kind: kind.into(), id: id.clone(), value: serde_json::to_vec(v).unwrap_or_default() });
    }
    for id in old.keys().filter(|id| !new.contains_key(*id)) {
        d.removed.push(id.clone());
        ops.push(Op::Delete { kind: kind.into(), id: id.clone() });
    }
    d
}

/// The differences between two documents and the store operations that turn one into the
/// other (only what changed is written).
pub fn diff(old: &ConfigSpec, new: &ConfigSpec) -> (Diff, Vec<Op>) {
    let mut ops = Vec::new();
    let upstreams = diff_maps(UPSTREAMS, &old.upstreams, &new.upstreams, &mut ops);
    let routes = diff_maps(ROUTES, &old.routes, &new.routes, &mut ops);
    (Diff { upstreams, routes }, ops)
}

/// Rebuilds a document from stored resources.
pub fn spec_from_state(state: &StoredState) -> Result<ConfigSpec, String> {
    let mut spec = ConfigSpec::default();
    for ((kind, id), bytes) in &state.resources {
        let bad = |e: serde_json::Error| format!("stored {kind}/{id} is unreadable: {e}");
        match kind.as_str() {
            UPSTREAMS => {
                spec.upstreams.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            ROUTES => {
                spec.routes.insert(id.clone(), serde_json::from_slice(bytes).map_err(bad)?);
            }
            other => return Err(format!("stored resource of unknown kind {other:?}")),
        }
    }
    Ok(spec)
}

/// Per-worker facts for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub id: usize,
    pub cpu: Option<usize>,
    pub driver: &'static str,
    pub revision: u64,
}

/// Everything the admin thread owns.
pub struct AdminState {
    store: Box<dyn ConfigStore>,
    spec: ConfigSpec,
    revision: u64,
    workers: Vec<MailboxSender<Control>>,
    acks: Receiver<Ack>,
    pub worker_status: Vec<WorkerStatus>,
    pub rollout_timeout: Duration,
    /// How long the last rollout took from commit to the last acknowledgement.
    pub last_rollout: Option<Duration>,
    /// The latest published snapshots. Holding them here makes the admin thread, not a
    /// worker, free a superseded snapshot (tens of thousands of allocations with many routes).
    published: std::collections::VecDeque<Arc<Snapshot>>,
}

impl AdminState {
    pub fn new(
        store: Box<dyn ConfigStore>,
        spec: ConfigSpec,
        revision: u64,
        workers: Vec<MailboxSender<Control>>,
        acks: Receiver<Ack>,
        worker_status: Vec<WorkerStatus>,
    ) -> Self {
        AdminState {
            store,
            spec,
            revision,
            workers,
            acks,
            worker_status,
            rollout_timeout: Duration::from_secs(10),
            last_rollout: None,
            published: std::collections::VecDeque::new(),
        }
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

    /// Validates, commits and rolls out `new`; answers once every worker serves it.
    pub fn apply(&mut self, new: ConfigSpec, summary: String) -> Result<(u64, Diff), ApiError> {
        let (d, ops) = diff(&self.spec, &new);
        let mut snapshot = Snapshot::compile(&new, self.revision + 1).map_err(ApiError::invalid)?;
        if ops.is_empty() {
            return Ok((self.revision, d));
        }
        let rev = self
            .store
            .commit(Change { ops, summary })
            .map_err(|e| ApiError::new(500, "store_failed", format!("the change was not stored: {e}")))?;
        snapshot.revision = rev;
        self.spec = new;
        self.revision = rev;
        self.rollout(Arc::new(snapshot))?;
        Ok((rev, d))
    }

    /// Validates `new` without changing anything.
    pub fn dry_run(&self, new: &ConfigSpec) -> Result<Diff, ApiError> {
        Snapshot::compile(new, self.revision + 1).map_err(ApiError::invalid)?;
        Ok(diff(&self.spec, new).0)
    }

    fn drain_acks(&mut self) {
        while let Ok(a) = self.acks.try_recv() {
            if let Some(w) = self.worker_status.get_mut(a.worker) {
                w.revision = w.revision.max(a.revision);
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
                if let Some(w) = self.worker_status.get_mut(a.worker) {
                    w.revision = w.revision.max(a.revision);
                }
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
