//! The per-core worker: its replica of the configuration, balancing state and pools, the
//! accept loop, and the control loop that swaps snapshots and drains.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::net::TcpListener;

use monoio::time::Instant;
use ringway_runtime::{Mailbox, WorkerContext};
use std::os::fd::AsRawFd;

use ringway_policy::{HeaderList, WorkerPolicyState};

use crate::access_log::LogQueue;
use crate::admission::ConnectionCaps;
use crate::cache::WorkerCache;
use crate::clock::Clock;
use crate::lb::LbState;
use crate::metrics::{LocalSeries, WorkerMetrics};
use crate::pool::Pool;
use crate::snapshot::{Snapshot, Upstream};
use crate::stream::Stream;

/// Server-wide limits; every one has a safe default.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request head, request line included (431 past it).
    pub max_head_bytes: usize,
    /// Most header fields in a request (431 past it).
    pub max_headers: usize,
    /// Time allowed for a whole request head once a connection has one to send.
    pub head_timeout: Duration,
    /// How long an idle client keep-alive connection is kept.
    pub keepalive_timeout: Duration,
    /// Longest silence while a client sends a request body.
    pub body_timeout: Duration,
    /// Least average rate of a request body in bytes per second, enforced once the client has
    /// spent `body_grace` sending it (only time waiting on the client counts; 0: no minimum).
    pub body_min_rate: u64,
    pub body_grace: Duration,
    /// Longest time one write to a client may take.
    pub write_timeout: Duration,
    /// Largest request body unless a route sets its own (`None`: no limit).
    pub max_body_bytes: Option<u64>,
    /// Whether the access log's `path` carries the query string.
    pub log_query: bool,
    /// Proxies in front of ringway whose `X-Forwarded-For` entries are trusted. 0: inbound
    /// ones are replaced by the peer's address; N: the inbound lines are joined and the peer
    /// appended, and the client address (for limits and hashing) is the Nth entry from the
    /// right of the inbound list.
    pub trusted_hops: u32,
    /// The peers whose `X-Forwarded-For` counts when `trusted_hops` is set (empty: every
    /// peer). Other peers are clients: their claims are replaced and the per-address
    /// connection cap applies to them.
    pub trusted_proxies: Vec<crate::admission::Network>,
}

impl ServerLimits {
    /// Whether `peer` is a proxy whose `X-Forwarded-For` entries are trusted.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_hops > 0
            && (self.trusted_proxies.is_empty() || self.trusted_proxies.iter().any(|n| n.contains(peer)))
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
            body_grace: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_body_bytes: Some(1 << 20),
            trusted_hops: 0,
            trusted_proxies: Vec::new(),
            log_query: false,
        }
    }
}

/// Orders from the control thread.
pub enum Control {
    /// Serve this snapshot for new requests; acknowledge with its revision.
    Apply(Arc<Snapshot>),
    /// Stop accepting, finish in-flight requests within the timeout, then return.
    Drain(Duration),
    /// Remove cached responses; acknowledge with the order's id.
    Purge(Purge),
    /// Invalidations relayed from other workers, one batch shared by every worker; not
    /// acknowledged (nothing waits for them).
    Invalidate(Arc<[Invalidate]>),
    /// Acknowledge with this order id (and, as every acknowledgement, current figures).
    Report(u64),
}

/// A worker's request to drop what every worker stored for `route` at `path` (after a
/// successful unsafe request there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidate {
    pub route: String,
    pub path: String,
    /// The worker that sent it (it has already invalidated its own partition).
    pub from: usize,
}

/// Which cached responses to remove: those of `route` at `path`, or under `prefix`.
#[derive(Debug, Clone)]
pub struct Purge {
    pub id: u64,
    pub route: String,
    pub path: Option<String>,
    pub prefix: Option<String>,
}

/// A worker's acknowledgement that it serves a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub worker: usize,
    pub revision: u64,
    /// The last purge order done (0: none).
    pub purged: u64,
    /// Entries that purge removed on this worker.
    pub removed: usize,
    /// Rate-limit keys this worker tracks.
    pub rate_limit_keys: usize,
    /// Responses in this worker's cache partition.
    pub cache_entries: usize,
}

/// Balancing state shared by the requests of one worker.
pub type SharedLb = Rc<RefCell<LbState>>;

/// The snapshot new requests use; a request keeps the one it started with.
pub struct Generation {
    pub snapshot: Arc<Snapshot>,
}

/// Buffers and header lists handed back by finished requests, so the next request reuses
/// their allocations instead of making new ones.
#[derive(Default)]
pub struct Spares {
    headers: RefCell<Vec<HeaderList<'static>>>,
    bufs: RefCell<Vec<Vec<u8>>>,
}

/// Spares kept per kind; more than the requests in flight at once is waste.
const MAX_SPARES: usize = 256;
/// Buffers larger than this are freed rather than kept.
const MAX_SPARE_BUF: usize = 256 * 1024;

impl Spares {
    /// An empty header list, with the capacity of an earlier one when there is one.
    #[inline]
    pub fn headers<'a>(&self) -> HeaderList<'a> {
        match self.headers.borrow_mut().pop() {
            Some(h) => h.recycle(),
            None => HeaderList::with_capacity(32),
        }
    }

    #[inline]
    pub fn give_headers(&self, h: HeaderList<'_>) {
        let mut all = self.headers.borrow_mut();
        if all.len() < MAX_SPARES {
            all.push(h.recycle());
        }
    }

    /// An empty buffer of at least `capacity` bytes.
    #[inline]
    pub fn buf(&self, capacity: usize) -> Vec<u8> {
        match self.bufs.borrow_mut().pop() {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    #[inline]
    pub fn give_buf(&self, mut b: Vec<u8>) {
        let mut all = self.bufs.borrow_mut();
        if all.len() < MAX_SPARES && b.capacity() <= MAX_SPARE_BUF {
            b.clear();
            all.push(b);
        }
    }
}

/// Per-worker counters, read by the status API and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: Cell<u64>,
    pub connections: Cell<u64>,
}

/// Everything one worker owns. Shared by its tasks through `Rc`; never crosses threads.
pub struct Worker {
    pub ctx: WorkerContext,
    pub limits: ServerLimits,
    generation: RefCell<Rc<Generation>>,
    /// Balancing state by upstream slot, with the fingerprint of the upstream it was made for:
    /// made on first use, kept while the upstream's targets and balancer stay the same.
    lb: RefCell<Vec<Option<(u64, SharedLb)>>>,
    pub pool: RefCell<Pool>,
    pub draining: Cell<bool>,
    pub active: Cell<usize>,
    /// The node's connection caps, shared by every worker (touched at accept and close).
    pub caps: Arc<ConnectionCaps>,
    pub counters: Counters,
    pub spares: Spares,
    /// Policy state of this worker (limit shards); shared by its requests.
    pub policy_state: Rc<RefCell<WorkerPolicyState>>,
    /// This worker's partition of the response cache.
    pub cache: RefCell<WorkerCache>,
    /// Invalidations for the other workers' partitions.
    pub invalidations: Option<crossbeam_channel::Sender<Invalidate>>,
    /// Connections idle between requests, so a drain can wake them.
    idle: RefCell<FdSlots<()>>,
    /// Client writes in progress without a timer of their own, with their deadlines; the
    /// sweeper ends those past it.
    watched: RefCell<FdSlots<Instant>>,
    /// A clock read once a second by the sweeper: deadlines a second coarse cost no clock read.
    coarse_now: Cell<Instant>,
    request_seq: Cell<u64>,
    id_prefix: u64,
    /// State of the generator of trace and span ids.
    rng: Cell<u64>,
    /// This worker's counters (read by the admin thread on a scrape).
    pub metrics: WorkerMetrics,
    /// Where each request's counters are, by route and upstream.
    pub series: RefCell<LocalSeries>,
    /// The worker's access-log queue.
    pub log: Option<LogQueue>,
    /// Wall time for the cache, the limits and the log.
    pub clock: Clock,
}

/// Sockets of connection tasks in some state, each with a value, in reusable slots; a slot is
/// cleared before its task can close the socket, so a listed descriptor is always live.
struct FdSlots<T> {
    items: Vec<(RawFd, T)>,
    free: Vec<usize>,
}

impl<T> Default for FdSlots<T> {
    fn default() -> Self {
        FdSlots { items: Vec::new(), free: Vec::new() }
    }
}

impl<T> FdSlots<T> {
    fn enter(&mut self, fd: RawFd, value: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = (fd, value);
                i
            }
            None => {
                self.items.push((fd, value));
                self.items.len() - 1
            }
        }
    }

    fn leave(&mut self, slot: usize) {
        self.items[slot].0 = -1;
        self.free.push(slot);
    }

    /// The live slots.
    fn live(&mut self) -> impl Iterator<Item = &mut (RawFd, T)> {
        self.items.iter_mut().filter(|(fd, _)| *fd >= 0)
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: WorkerContext,
        limits: ServerLimits,
        snapshot: Arc<Snapshot>,
        seed: u64,
        workers: usize,
        cache_bytes: u64,
        limit_keys: usize,
        caps: Arc<ConnectionCaps>,
    ) -> Worker {
        let id_prefix = seed ^ ((ctx.id as u64) << 56);
        Worker {
            ctx,
            limits,
            generation: RefCell::new(Rc::new(Generation { snapshot })),
            lb: RefCell::new(Vec::new()),
            pool: RefCell::new(Pool::default()),
            draining: Cell::new(false),
            active: Cell::new(0),
            caps,
            counters: Counters::default(),
            spares: Spares::default(),
            policy_state: Rc::new(RefCell::new(WorkerPolicyState::new(workers, limit_keys))),
            cache: RefCell::new(WorkerCache::new(cache_bytes)),
            invalidations: None,
            idle: RefCell::new(FdSlots::default()),
            watched: RefCell::new(FdSlots::default()),
            coarse_now: Cell::new(Instant::now()),
            request_seq: Cell::new(0),
            id_prefix,
            rng: Cell::new(crate::record::mix64(id_prefix)),
            metrics: WorkerMetrics::detached(ctx.id),
            series: RefCell::new(LocalSeries::default()),
            log: None,
            clock: Clock::real(),
        }
    }

    /// 64 unpredictable bits (for trace and span ids; not for secrets).
    #[inline]
    pub fn random(&self) -> u64 {
        let s = self.rng.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.rng.set(s);
        crate::record::mix64(s)
    }

    /// The generation new requests use (a non-atomic reference count).
    pub fn generation(&self) -> Rc<Generation> {
        self.generation.borrow().clone()
    }

    /// Swaps in a new snapshot; in-flight requests keep the generation they started with.
    /// O(1): state derived from the snapshot is made again lazily, only where it changed.
    pub fn apply(&self, snapshot: Arc<Snapshot>) {
        self.metrics.gauges.revision.set(snapshot.revision);
        *self.generation.borrow_mut() = Rc::new(Generation { snapshot });
    }

    /// This worker's balancing state for `upstream`.
    #[inline]
    pub fn lb_state(&self, upstream: &Upstream) -> SharedLb {
        let mut all = self.lb.borrow_mut();
        let slot = upstream.slot as usize;
        if all.len() <= slot {
            all.resize(slot + 1, None);
        }
        match &all[slot] {
            Some((fp, s)) if *fp == upstream.fingerprint => s.clone(),
            _ => {
                let seed = self.id_prefix ^ (slot as u64).wrapping_mul(0x9e37_79b9);
                let s = Rc::new(RefCell::new(LbState::new(upstream.targets.len(), seed)));
                all[slot] = Some((upstream.fingerprint, s.clone()));
                s
            }
        }
    }

    /// A fresh request id: 32 hex digits, unique per process run.
    pub fn next_request_id(&self) -> [u8; 32] {
        let seq = self.request_seq.get().wrapping_add(1);
        self.request_seq.set(seq);
        let mut out = [0u8; 32];
        for (i, v) in [self.id_prefix, seq].iter().enumerate() {
            for j in 0..16 {
                out[i * 16 + j] = b"0123456789abcdef"[((v >> (60 - 4 * j)) & 15) as usize];
            }
        }
        out
    }

    /// Writes all of `buf` to a client under `limits.write_timeout`, kept by the sweeper
    /// rather than a timer of its own (a second coarse, and no clock read or timer per write).
    pub async fn write_client(&self, stream: &mut Stream, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        let deadline = self.coarse_now.get() + self.limits.write_timeout;
        let slot = self.watched.borrow_mut().enter(stream.as_raw_fd(), deadline);
        // Cleared however the write ends, even if its task is dropped mid-write: a stale slot
        // could later shut down another socket that got the same descriptor number.
        struct Leave<'w>(&'w Worker, usize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.watched.borrow_mut().leave(self.1);
            }
        }
        let _leave = Leave(self, slot);
        crate::io::write_all_untimed(stream, buf).await
    }

    /// Ends the watched writes past their deadline: their sockets are shut down, so the write
    /// fails and the connection closes.
    fn expire_writes(&self, now: Instant) {
        for (fd, deadline) in self.watched.borrow_mut().live() {
            if *deadline <= now {
                // SAFETY: the fd belongs to a connection task of this worker that is inside
                // `write_client` (slots are cleared before it returns, so before any close).
                unsafe {
                    libc::shutdown(*fd, libc::SHUT_RDWR);
                }
                // Once is enough; the slot itself is freed when the write returns.
                *deadline = now + Duration::from_secs(3600);
            }
        }
    }

    /// Registers an idle connection's socket; returns its slot.
    pub fn idle_enter(&self, fd: RawFd) -> usize {
        self.idle.borrow_mut().enter(fd, ())
    }

    pub fn idle_leave(&self, slot: usize) {
        self.idle.borrow_mut().leave(slot);
    }

    /// Ends every idle connection's wait: their pending reads see end-of-stream.
    fn wake_idle(&self) {
        for &mut (fd, ()) in self.idle.borrow_mut().live() {
            // SAFETY: the fd belongs to a live connection task of this worker (slots are
            // cleared before a connection closes); shutting down its read side is harmless.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
    }
}

/// A one-shot event local to a worker.
#[derive(Default)]
pub struct LocalEvent {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until fired; any number of tasks may wait.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                let mut w = self.wakers.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, stop: Rc<LocalEvent>) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = stop.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let trusted = worker.limits.trusts(peer.ip());
                let Some(admitted) = worker.caps.admit(peer.ip(), !trusted) else {
                    // Over a connection cap: closed at once, before any byte is read.
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                worker.active.set(worker.active.get() + 1);
                worker.metrics.gauges.open_connections.set(worker.active.get() as u64);
                worker.counters.connections.set(worker.counters.connections.get() + 1);
                let w = worker.clone();
                monoio::spawn(async move {
                    // A bug that panics while serving one connection closes that connection,
                    // not the worker and every other connection on it.
                    if CatchPanic(crate::conn::serve(&w, Stream::from(stream), peer, trusted)).await.is_err() {
                        log::error!("worker {}: a connection task panicked; its connection was closed", w.ctx.id);
                    }
                    w.caps.release(admitted);
                    w.active.set(w.active.get() - 1);
                    w.metrics.gauges.open_connections.set(w.active.get() as u64);
                });
            }
            Err(e) => {
                log::warn!("worker {}: accept failed: {e}", worker.ctx.id);
                // Out of descriptors or similar: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn sweeper(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        worker.coarse_now.set(now);
        worker.expire_writes(now);
        // Every second: idle upstream connections the origin closed or spoke on go at once.
        worker.pool.borrow_mut().sweep(now);
    }
}

/// Polls a future, turning a panic inside it into `Err` (the panic message is printed by the
/// panic hook as usual).
struct CatchPanic<F>(F);

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning; the inner future is never moved out of `self`.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Everything a worker is started with.
pub struct WorkerSetup {
    pub listener: std::net::TcpListener,
    pub mailbox: Mailbox<Control>,
    pub snapshot: Arc<Snapshot>,
    pub limits: ServerLimits,
    pub acks: crossbeam_channel::Sender<Ack>,
    pub seed: u64,
    /// How many workers the gateway runs (node-wide limits size their leases by it).
    pub workers: usize,
    /// This worker's share of the response cache, in bytes.
    pub cache_bytes: u64,
    /// Rate-limit keys this worker tracks at most.
    pub limit_keys: usize,
    /// Where invalidations for the other workers go (the control thread relays them).
    pub invalidations: crossbeam_channel::Sender<Invalidate>,
    /// The node's connection caps.
    pub caps: Arc<ConnectionCaps>,
    /// This worker's counters, read by the admin thread.
    pub metrics: WorkerMetrics,
    /// This worker's access-log queue.
    pub log: Option<LogQueue>,
    /// The gateway's clock (movable only in a gateway started for tests).
    pub clock: Clock,
}

/// Runs one worker until it is drained (or its control channel closes).
pub async fn run_worker(ctx: WorkerContext, setup: WorkerSetup) {
    let WorkerSetup {
        listener,
        mailbox,
        snapshot,
        limits,
        acks,
        seed,
        workers,
        cache_bytes,
        limit_keys,
        invalidations,
        caps,
        metrics,
        log,
        clock,
    } = setup;
    let revision = snapshot.revision;
    let mut worker = Worker::new(ctx, limits, snapshot, seed, workers, cache_bytes, limit_keys, caps);
    worker.invalidations = Some(invalidations);
    worker.metrics = metrics;
    worker.metrics.gauges.revision.set(revision);
    worker.log = log;
    worker.clock = clock;
    let worker = Rc::new(worker);
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("worker {}: cannot adopt listener: {e}", ctx.id);
            return;
        }
    };
    let stop = Rc::new(LocalEvent::default());
    monoio::spawn(accept_loop(worker.clone(), listener, stop.clone()));
    monoio::spawn(sweeper(worker.clone()));
    let ack = |revision: u64, purged: u64, removed: usize| Ack {
        worker: ctx.id,
        revision,
        purged,
        removed,
        rate_limit_keys: worker.policy_state.borrow().limits.tracked_keys(),
        cache_entries: worker.cache.borrow().len(),
    };
    let _ = acks.send(ack(revision, 0, 0));
    let mut purged = 0;
    let drain = loop {
        let Some(first) = mailbox.recv().await else { break Duration::ZERO };
        // Take everything queued: of the snapshots only the newest is applied (latest wins);
        // every purge is done.
        let mut newest = None;
        let mut drain_to = None;
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Control::Apply(s) => newest = Some(s),
                // Orders queued behind a drain are still answered.
                Control::Drain(t) => drain_to = Some(t),
                Control::Purge(p) => {
                    let removed = worker.cache.borrow_mut().purge(&p.route, p.path.as_deref(), p.prefix.as_deref());
                    purged = p.id;
                    let _ = acks.send(ack(worker.generation().snapshot.revision, purged, removed));
                }
                Control::Invalidate(batch) => {
                    let mut cache = worker.cache.borrow_mut();
                    for inv in batch.iter().filter(|i| i.from != ctx.id) {
                        cache.invalidate(&inv.route, &inv.path);
                    }
                }
                Control::Report(id) => {
                    purged = id;
                    let _ = acks.send(ack(worker.generation().snapshot.revision, purged, 0));
                }
            }
            next = mailbox.try_recv();
        }
        if let Some(s) = newest {
            let rev = s.revision;
            worker.apply(s);
            let _ = acks.send(ack(rev, purged, 0));
        }
        if let Some(t) = drain_to {
            break t;
        }
    };
    worker.draining.set(true);
    stop.fire();
    worker.wake_idle();
    let deadline = Instant::now() + drain;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
        worker.wake_idle();
    }
    if worker.active.get() > 0 {
        log::warn!("worker {}: drain timeout with {} connection(s) open", ctx.id, worker.active.get());
    }
}
