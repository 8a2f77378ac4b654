//! Running a worker: its accept loop, its sweeper, and the control loop that swaps snapshots,
//! answers the control thread and drains. The top of the data plane: it starts connections
//! ([`crate::conn`]) on a [`Worker`]'s state.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use monoio::time::Instant;
use ringway_runtime::{Mailbox, WorkerContext};

use crate::access_log::LogQueue;
use crate::admission::ConnectionCaps;
use crate::clock::Clock;
use crate::event::LocalEvent;
use crate::metrics::WorkerMetrics;
use crate::snapshot::Snapshot;
use crate::stream::Stream;
use crate::task::CatchPanic;
use crate::worker::{Ack, Control, Invalidate, ServerLimits, Worker};

/// Accepts connections; on the TLS listener (`tls`) each runs its handshake in its own task
/// before it is served.
async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, stop: Rc<LocalEvent>, tls: bool) {
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
                    let served = async {
                        if tls {
                            if let Some((s, info)) = handshake(&w, stream, peer).await {
                                let h2 = info.h2;
                                let (s, info) = (Stream::Tls(Box::new(s)), Some(Rc::new(info)));
                                if h2 {
                                    Box::pin(crate::h2::serve(&w, s, (peer, trusted), info, Vec::new())).await;
                                } else {
                                    crate::conn::serve(&w, s, peer, trusted, info).await;
                                }
                            }
                        } else {
                            crate::conn::serve(&w, Stream::from(stream), peer, trusted, None).await;
                        }
                    };
                    if CatchPanic(served).await.is_err() {
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

/// The server side of a TLS handshake under the head timeout, with the certificates of the
/// snapshot current when it starts; refusals are counted and logged at debug.
async fn handshake(
    worker: &Worker,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(crate::tls::TlsStream, crate::tls::TlsInfo)> {
    let sites = worker.generation().snapshot.tls.clone();
    let r = match monoio::time::timeout(worker.limits.head_timeout, crate::tls::accept(stream, &sites)).await {
        Ok(r) => r,
        Err(_) => Err(crate::tls::Refused::Timeout),
    };
    let g = &worker.metrics.gauges;
    match r {
        Ok((s, info)) => {
            let c = if info.resumed { &g.tls_resumed } else { &g.tls_full };
            c.add(1);
            Some((s, info))
        }
        Err(e) => {
            if let Some(i) = crate::tls::Refused::ALL.iter().position(|r| *r == e) {
                g.tls_refused[i].add(1);
            }
            log::debug!("worker {}: TLS handshake from {peer} refused: {}", worker.ctx.id, e.reason());
            None
        }
    }
}

async fn sweeper(worker: Rc<Worker>) {
    loop {
        let due = Instant::now() + Duration::from_secs(1);
        monoio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        worker.coarse_now.set(now);
        worker.wall.set(crate::clock::anchor());
        // How late the timer woke: the time other work held the loop (its lag).
        let lag = now.saturating_duration_since(due).as_micros().min(u128::from(u64::MAX)) as u64;
        worker.metrics.flush_stats(&mut worker.series.borrow_mut(), worker.clock.unix_ms() / 1000, lag);
        worker.expire_writes(now);
        // Every second: idle upstream connections the origin closed or spoke on go at once.
        worker.pool.borrow_mut().sweep(now);
    }
}

/// How often a worker looks whether its access-log block should go before it is full.
const LOG_FLUSH: Duration = Duration::from_millis(50);

/// Hands over the worker's partly filled access-log block while the log is on when no full
/// block went during the last [`LOG_FLUSH`]: the records of a quiet worker reach the log within
/// two ticks (a busy worker's blocks fill first).
async fn log_flusher(worker: Rc<Worker>) {
    let Some(log) = &worker.log else { return };
    loop {
        let on = log.enabled();
        monoio::time::sleep(if on { LOG_FLUSH } else { Duration::from_secs(1) }).await;
        log.tick(&worker.metrics.gauges);
    }
}

/// Everything a worker is started with.
pub struct WorkerSetup {
    pub listener: std::net::TcpListener,
    /// This worker's TLS listener, when the node has one.
    pub tls_listener: Option<std::net::TcpListener>,
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
    /// The node's limit bank, shared by every worker.
    pub limit_bank: Arc<ringway_policy::limits::LimitBank>,
    /// Where invalidations for the other workers go (the control thread relays them).
    pub invalidations: crossbeam_channel::Sender<Invalidate>,
    /// The node's connection caps.
    pub caps: Arc<ConnectionCaps>,
    /// This worker's counters, read by the admin thread.
    pub metrics: WorkerMetrics,
    /// This worker's access-log queue.
    pub log: Option<LogQueue>,
    /// Where sampled requests' spans go (`None`: nowhere).
    pub traces: Option<crate::traces::SpanSender>,
    /// The identity threads (password checks, key fetches).
    pub identity: Option<crate::calls::IdentityCalls>,
    /// The node's token-signing keys.
    pub keys: Arc<ringway_policy::keys::KeyStore>,
    /// The gateway's clock (movable only in a gateway started for tests).
    pub clock: Clock,
}

/// Stops accepting on the TLS listener of `old` (connections stay) and starts on `listener`;
/// returns its stop event.
fn listen_tls(
    worker: &Rc<Worker>,
    listener: Option<std::net::TcpListener>,
    old: Option<Rc<LocalEvent>>,
) -> Option<Rc<LocalEvent>> {
    if let Some(s) = old {
        s.fire();
    }
    let l = match TcpListener::from_std(listener?) {
        Ok(l) => l,
        Err(e) => {
            log::error!("worker {}: cannot adopt the TLS listener: {e}", worker.ctx.id);
            return None;
        }
    };
    let stop = Rc::new(LocalEvent::default());
    monoio::spawn(accept_loop(worker.clone(), l, stop.clone(), true));
    Some(stop)
}

/// Runs one worker until it is drained (or its control channel closes).
pub async fn run_worker(ctx: WorkerContext, setup: WorkerSetup) {
    let WorkerSetup {
        listener,
        tls_listener,
        mailbox,
        snapshot,
        limits,
        acks,
        seed,
        workers,
        cache_bytes,
        limit_keys,
        limit_bank,
        invalidations,
        caps,
        metrics,
        log,
        traces,
        identity,
        keys,
        clock,
    } = setup;
    let revision = snapshot.revision;
    let mut worker = Worker::new(ctx, limits, snapshot, seed, workers, cache_bytes, (limit_keys, limit_bank), caps);
    worker.invalidations = Some(invalidations);
    worker.metrics = metrics;
    // Whichever setup this worker took, its counters carry its own id.
    worker.metrics.gauges.worker.set(ctx.id as u64);
    worker.metrics.gauges.revision.set(revision);
    worker.log = log;
    worker.traces = traces;
    worker.identity = identity;
    worker.policy_state.borrow_mut().keys = keys;
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
    monoio::spawn(accept_loop(worker.clone(), listener, stop.clone(), false));
    let mut tls_stop = listen_tls(&worker, tls_listener, None);
    monoio::spawn(sweeper(worker.clone()));
    monoio::spawn(log_flusher(worker.clone()));
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
                Control::TlsListener(l) => tls_stop = listen_tls(&worker, l, tls_stop.take()),
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
    if let Some(s) = tls_stop {
        s.fire();
    }
    worker.wake_idle();
    let deadline = Instant::now() + drain;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
        worker.wake_idle();
    }
    if worker.active.get() > 0 {
        log::warn!("worker {}: drain timeout with {} connection(s) open", ctx.id, worker.active.get());
    }
    // The last records go to the log thread before the worker ends (the node stops the log after
    // its workers).
    if let Some(log) = &worker.log {
        log.flush(&worker.metrics.gauges);
    }
}
