//! One request, from a parsed head to the end of the response: route, run the policy chain,
//! pick a target, exchange with the upstream (with one retry on a stale pooled connection when
//! that is safe), and stream bodies both ways without holding them whole.
//!
//! This module reads the head and plans the request (`handle`, `prepare`); `exchange` talks
//! to the upstream and relays the response, `body` reads request bodies, `cached` holds what
//! the response cache needs of a request.
//!
//! Hot path: no locks, no blocking, no info-level logging.

use std::rc::Rc;
use std::time::Duration;

use ringway_policy::{Context, Layered};

mod body;
mod cached;
mod exchange;
mod finish;
mod grpc;
mod grpc_web;
mod plan;
mod spans;
mod transcode;
mod tunnel;

use self::cached::{serve_stored, Inflight, SentNames};
use self::exchange::exchange;
use self::finish::finish;
pub use self::finish::finish_unparsed;
use crate::cache::Stored;
use crate::event::LocalEvent;
use crate::h1::head::BodyKind;
pub use crate::record::RequestId;
use crate::record::{CacheStatus, Record};
use crate::respond::{fate, Failure, Fate, Phase, ProxyError};
use crate::session::{Asked, Conn};
use crate::snapshot::{Route, Upstream};
use crate::worker::{SharedLb, Worker};

pub use crate::h1::head::MAX_HEADERS;

/// What `prepare` decided for a request that goes upstream.
struct Plan<'g> {
    route: &'g Route,
    /// The route's policies over the global ones.
    chains: Layered<'g>,
    upstream: &'g Upstream,
    lb: SharedLb,
    /// The target of the first attempt.
    target: usize,
    /// The balancer's key (a retry picks with it again).
    lb_key: u64,
    /// A trial request the half-open breaker let through.
    trial: bool,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    is_head: bool,
    idempotent: bool,
    http10: bool,
    /// Transfer codings the client accepts besides chunked (`TE`), as bits.
    te_accepts: u8,
    max_body: Option<u64>,
    request_id: RequestId,
    /// The policies' context (response headers to add, permits held until the end); only for
    /// routes with policies.
    cx: Option<Context>,
    /// What the cache does with this request's response, on cached routes.
    cache: Option<CachePlan<'g>>,
    /// The path whose stored responses a successful unsafe request invalidates.
    invalidate: Option<String>,
    /// A WebSocket upgrade the route allows: tunnelled once the upstream switches.
    websocket: bool,
    /// The route transcodes HTTP/JSON to gRPC, with this proto.
    transcode: Option<(&'g crate::grpc::transcode::Transcode, &'g crate::grpc::proto::Proto)>,
}

/// A cacheable request that goes upstream.
struct CachePlan<'g> {
    key: u64,
    /// Header fields that reached the upstream without being part of the key.
    sent: SentNames,
    /// Store the response when it allows it.
    store: bool,
    /// Wait for a fetch of the same key already under way (not when the client asked for a
    /// fresh answer).
    coalesce: bool,
    /// The generation of this path's fills at lookup: an invalidation of the path (or a purge
    /// by prefix) meanwhile means do not store.
    generation: u64,
    /// A stored response past its freshness, kept for `stale-if-error`.
    stale: Option<Rc<Stored>>,
    /// The request carries `Authorization`: store only what the response marks as shared.
    auth: bool,
    rule: &'g ringway_policy::CacheRule,
    /// The request path, kept with the stored response for purges.
    path: String,
}

/// A request answered without the upstream.
pub(super) struct Early<'g> {
    error: Option<Failure>,
    reply: Option<ringway_policy::Reply>,
    route: Option<&'g Route>,
    chains: Option<Layered<'g>>,
    body: BodyKind,
    keep_alive: bool,
    is_head: bool,
    http10: bool,
    request_id: RequestId,
    cx: Option<Context>,
    /// A fresh stored response that answers the request.
    cached: Option<Rc<Stored>>,
    /// A call a policy asked for: made, then the request is planned again with its answer.
    call: Option<ringway_policy::Outbound>,
}

impl Early<'_> {
    fn new(request_id: RequestId) -> Self {
        Early {
            error: None,
            reply: None,
            route: None,
            chains: None,
            body: BodyKind::None,
            keep_alive: false,
            is_head: false,
            http10: false,
            request_id,
            cx: None,
            cached: None,
            call: None,
        }
    }
}

/// Handles the request whose head is the first `head_len` bytes of `conn.rbuf`. Returns
/// whether the connection may carry another request. Every request ends here, in [`finish`].
pub async fn handle(worker: &Rc<Worker>, conn: &mut Conn, head_len: usize) -> bool {
    worker.counters.requests.set(worker.counters.requests.get() + 1);
    // Counted down however the request ends, a panic included.
    struct InFlight<'a>(&'a crate::metrics::Counter);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get().saturating_sub(1));
        }
    }
    worker.metrics.gauges.inflight.add(1);
    let _inflight = InFlight(&worker.metrics.gauges.inflight);
    let generation = worker.generation();
    // The upstream request is built in a buffer of the worker's, given back when the request
    // ends: an idle connection holds none.
    let mut out = worker.spares.buf(0);
    out.clear();
    let mut rec = Record::new(conn.first_byte.take().unwrap_or_else(monoio::time::Instant::now));
    let mut text = std::mem::take(&mut conn.text);
    text.clear();
    let mut answers: Option<Box<ringway_policy::Answers>> = None;
    let mut calls = 0;
    let prepared = loop {
        let asked = (head_len, answers.clone());
        let prepared = plan::prepare(worker, &generation, conn, asked, &mut out, &mut rec, &mut text);
        match prepared {
            Err(mut early) if early.call.is_some() => {
                let call = early.call.take();
                calls += 1;
                if calls > MAX_CALLS {
                    // Policies keep asking: refused rather than asked without end.
                    early.reply = Some(unavailable());
                    break Err(early);
                }
                drop(early);
                // The request is planned again from its head (still in the receive buffer),
                // with the answer: policies have no state across the pause.
                if let Some(c) = call {
                    let got = crate::calls::make(worker.identity.as_ref(), &worker.calls, c).await;
                    answers.get_or_insert_default().add(got);
                }
                out.clear();
                // Planned again from scratch: nothing of the first plan stays in the record.
                rec = crate::record::Record::new(rec.started);
            }
            prepared => break prepared,
        }
    };
    conn.rec = rec;
    conn.text = text;
    let consumer = conn.rec.consumer.and_then(|s| generation.snapshot.consumers.get(s)).map(|c| c.id.as_str());
    let (keep, route, target) = match prepared {
        Ok(mut plan) => {
            let asked = Asked { http10: plan.http10, te_accepts: plan.te_accepts, head_only: plan.is_head };
            conn.down.begin(head_len, asked, plan.body);
            conn.rec.request_id = plan.request_id;
            let keep = if plan.websocket {
                tunnel::run(worker, conn, &mut plan, out).await
            } else {
                go_upstream(worker, conn, &mut plan, out).await
            };
            if let Some(cx) = &plan.cx {
                plan.chains.on_complete(cx, conn.rec.status);
            }
            if plan.trial {
                // A half-open breaker's trial that never reached the upstream (answered from
                // the cache, or the request ended first): its permit goes back.
                plan.upstream.health.breaker.give_permit();
            }
            (keep, Some(plan.route), Some((plan.upstream, plan.target)))
        }
        Err(early) => {
            conn.rec.request_id = early.request_id;
            let route = early.route;
            (answer_early(worker, conn, *early, head_len, out).await, route, None)
        }
    };
    finish(worker, conn, route, target, consumer);
    worker.spares.give_buf(std::mem::take(&mut conn.upstream_buf));
    keep
}

/// Outbound calls one request may make before it is refused (each policy makes one at most).
const MAX_CALLS: u32 = 4;

fn unavailable() -> ringway_policy::Reply {
    ringway_policy::Reply::json_error(
        503,
        "unavailable",
        "the request cannot be authorized right now; try again shortly",
    )
}

/// A planned request: answered by a fetch of the same key under way, or sent upstream.
async fn go_upstream(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: Vec<u8>) -> bool {
    let mut _leader = None;
    if let Some((key, auth)) = plan.cache.as_ref().filter(|c| c.store && c.coalesce).map(|c| (c.key, c.auth)) {
        let waiting = worker.cache.borrow().inflight.get(&key).cloned();
        match waiting {
            Some(done) => {
                // Another request of this worker is fetching it: wait, then answer from what
                // it stored (or go upstream if it stored nothing).
                let _ = monoio::time::timeout(Duration::from_secs(30), done.wait()).await;
                let now = worker.clock.unix_ms();
                let hit = worker.cache.borrow().get(key).filter(|s| s.is_fresh(now) && (!auth || s.auth_ok));
                if let Some(stored) = hit {
                    if let Some(cx) = plan.cx.as_mut() {
                        cx.extras.text = Some(("x-cache-status", "HIT"));
                    }
                    conn.rec.cache = CacheStatus::Hit;
                    let keep = plan.keep_alive && !worker.draining.get();
                    let extras = plan.cx.as_ref().map(|c| &c.extras);
                    let info = (plan.request_id.as_bytes(), plan.is_head, keep);
                    conn.upstream_buf = out;
                    return serve_stored(worker, conn, &stored, info, plan.chains, extras).await;
                }
            }
            None => {
                let done = Rc::new(LocalEvent::default());
                worker.cache.borrow_mut().inflight.insert(key, done.clone());
                _leader = Some(Inflight { worker, key, done });
            }
        }
    }
    exchange(worker, conn, plan, out).await
}

/// Answers a request without the upstream: from the cache, with a policy's reply or with an
/// error.
async fn answer_early(worker: &Worker, conn: &mut Conn, early: Early<'_>, head_len: usize, out: Vec<u8>) -> bool {
    conn.upstream_buf = out;
    // Keep the connection only when the unread body is already here in full.
    let body_here = match early.body {
        BodyKind::None => Some(0),
        BodyKind::Length(n) if conn.down.received_after(head_len) as u64 >= n => Some(n as usize),
        _ => None,
    };
    // An answer of the gateway's own: neither a policy's nor the cache's.
    let answered = early.reply.is_some() || early.cached.is_some();
    let error = (!answered).then(|| early.error.unwrap_or(Failure::new(ProxyError::NoRoute, Phase::Route)));
    let fate = fate(error.as_ref(), early.keep_alive, body_here.is_some(), worker.draining.get());
    let keep = fate == Fate::Keep;
    let asked = Asked { http10: early.http10, te_accepts: 0, head_only: early.is_head };
    conn.down.skip(head_len + body_here.unwrap_or(0), asked);
    conn.rec.bytes_in = body_here.unwrap_or(0) as u64;
    if let (Some(stored), Some(chains)) = (&early.cached, early.chains) {
        let extras = early.cx.as_ref().map(|c| &c.extras);
        let info = (early.request_id.as_bytes(), early.is_head, keep);
        let keep = serve_stored(worker, conn, stored, info, chains, extras).await;
        if let Some(cx) = &early.cx {
            chains.on_complete(cx, conn.rec.status);
        }
        return keep;
    }
    let reply = match (early.reply, error) {
        (Some(r), _) => r,
        (None, e) => {
            let e = e.unwrap_or(Failure::new(ProxyError::NoRoute, Phase::Route));
            conn.rec.failed(&e);
            e.error.reply()
        }
    };
    conn.rec.status = reply.status;
    conn.rec.bytes_out = if early.is_head { 0 } else { reply.body.len() as u64 };
    let extras = early.cx.as_ref().map(|c| &c.extras);
    let id = early.request_id.as_bytes();
    let close = conn.down.write_reply(&reply, id, !keep, early.chains, extras, &worker.spares);
    let r = conn.down.flush(worker).await;
    if close && r.is_ok() {
        conn.down.close().await;
    }
    if r.is_err() {
        conn.rec.unsent();
    }
    if let (Some(cx), Some(chains)) = (&early.cx, early.chains) {
        chains.on_complete(cx, conn.rec.status);
    }
    !close && r.is_ok()
}
