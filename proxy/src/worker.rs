//! The per-core worker's state: its replica of the configuration, balancing state, pools, cache
//! partition, counters and clock, and the orders it takes from the control thread. Running it
//! (accept loop, sweeper, control loop) is [`crate::run`]'s.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::time::Instant;
use ringway_runtime::WorkerContext;
use std::os::fd::AsRawFd;

use ringway_policy::WorkerPolicyState;

use crate::access_log::LogQueue;
use crate::admission::ConnectionCaps;
use crate::cache::WorkerCache;
use crate::clock::Clock;
use crate::lb::LbState;
use crate::metrics::{LocalSeries, WorkerMetrics};
use crate::pool::Pool;
use crate::snapshot::{Snapshot, Upstream};
use crate::spares::Spares;
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
    /// Accept TLS connections on this listener from now on, no longer on the one before
    /// (`None`: on none).
    TlsListener(Option<std::net::TcpListener>),
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

/// Per-worker counters, read by the status API and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: Cell<u64>,
    pub connections: Cell<u64>,
}

/// Everything one worker owns. Shared by its tasks through `Rc`; never crosses threads.
pub struct Worker {
    pub ctx: WorkerContext,
    /// How many workers the node runs.
    pub workers: usize,
    pub limits: ServerLimits,
    generation: RefCell<Rc<Generation>>,
    /// Balancing state by upstream slot, with the fingerprint of the upstream it was made for:
    /// made on first use, kept while the upstream's targets and balancer stay the same.
    lb: RefCell<Vec<Option<(u64, SharedLb)>>>,
    pub pool: RefCell<Pool>,
    /// Multiplexed HTTP/2 connections to upstreams.
    pub h2_upstreams: RefCell<crate::h2::up::Connections>,
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
    pub(crate) coarse_now: Cell<Instant>,
    /// The wall clock at a monotonic instant, taken with `coarse_now`: the access log's
    /// timestamps are counted from it ([`Clock::unix_ms_at`]).
    pub(crate) wall: Cell<crate::clock::Anchor>,
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
    /// Where sampled requests' spans go.
    pub traces: Option<crate::traces::SpanSender>,
    /// Where the policies' calls go: password checks, key fetches (`None`: nowhere; they fail).
    pub identity: Option<crate::calls::IdentityCalls>,
    /// Introspection calls under way, which requests with the same token wait for.
    pub calls: crate::calls::InFlight,
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

/// A client write the sweeper watches. Cleared however the write ends, even if its task is
/// dropped mid-write: a stale slot could later shut down another socket that got the same
/// descriptor number.
pub struct WriteWatch<'w>(&'w Worker, usize);

impl Drop for WriteWatch<'_> {
    fn drop(&mut self) {
        self.0.watched.borrow_mut().leave(self.1);
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
        (limit_keys, limit_bank): (usize, Arc<ringway_policy::limits::LimitBank>),
        caps: Arc<ConnectionCaps>,
    ) -> Worker {
        let id_prefix = seed ^ ((ctx.id as u64) << 56);
        Worker {
            ctx,
            workers: workers.max(1),
            limits,
            generation: RefCell::new(Rc::new(Generation { snapshot })),
            lb: RefCell::new(Vec::new()),
            pool: RefCell::new(Pool::default()),
            h2_upstreams: RefCell::default(),
            draining: Cell::new(false),
            active: Cell::new(0),
            caps,
            counters: Counters::default(),
            spares: Spares::default(),
            policy_state: Rc::new(RefCell::new(WorkerPolicyState::new(workers, limit_keys, limit_bank))),
            cache: RefCell::new(WorkerCache::new(cache_bytes)),
            invalidations: None,
            idle: RefCell::new(FdSlots::default()),
            watched: RefCell::new(FdSlots::default()),
            coarse_now: Cell::new(Instant::now()),
            wall: Cell::new(crate::clock::anchor()),
            request_seq: Cell::new(0),
            id_prefix,
            rng: Cell::new(crate::record::mix64(id_prefix)),
            metrics: WorkerMetrics::detached(ctx.id),
            series: RefCell::new(LocalSeries::default()),
            log: None,
            traces: None,
            identity: None,
            calls: Default::default(),
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
        let _watch = self.watch_write(stream.as_raw_fd());
        crate::io::write_all_untimed(stream, buf).await
    }

    /// Puts a client write on `fd` under `limits.write_timeout`, kept by the sweeper, until the
    /// guard drops.
    pub fn watch_write(&self, fd: std::os::fd::RawFd) -> WriteWatch<'_> {
        let deadline = self.coarse_now.get() + self.limits.write_timeout;
        WriteWatch(self, self.watched.borrow_mut().enter(fd, deadline))
    }

    /// Ends the watched writes past their deadline: their sockets are shut down, so the write
    /// fails and the connection closes.
    pub(crate) fn expire_writes(&self, now: Instant) {
        for (fd, deadline) in self.watched.borrow_mut().live() {
            if *deadline <= now {
                // SAFETY: the fd belongs to a connection task of this worker that is inside a
                // watched write (`write_client`, or under a `WriteWatch` guard): slots are
                // cleared before the write returns, so before any close.
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
    pub(crate) fn wake_idle(&self) {
        for &mut (fd, ()) in self.idle.borrow_mut().live() {
            // SAFETY: the fd belongs to a live connection task of this worker (slots are
            // cleared before a connection closes); shutting down its read side is harmless.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RD);
            }
        }
    }
}
