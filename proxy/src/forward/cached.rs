//! The response cache's seam in a request: the lookup phase ([`lookup`]: a stored answer, or
//! the plan for the upstream's), what a cacheable request sent upstream, coalesced misses,
//! answers from stored responses, and whether a response may be stored.
//!
//! Hot path.

use std::rc::Rc;

use ringway_policy::{HeaderList, Layered, RequestHead, ResponseHead};

use super::{CachePlan, Plan};
use crate::cache::Stored;
use crate::event::LocalEvent;
use crate::h1::head::BodyKind;
use crate::record::{CacheStatus, Record};
use crate::session::Conn;
use crate::worker::Worker;

/// The names of the header fields a cacheable request sent upstream that are not part of its
/// cache key (Authorization, the proxy's own per-request fields, fields the policies added):
/// a response that varies on one of them must not be stored under the key. Fixed size, no
/// allocation; past its capacity it answers "sent" for every name.
pub(super) struct SentNames {
    hashes: [u32; 12],
    len: u8,
    overflow: bool,
}

impl SentNames {
    /// Fields whose value is the same for every request sharing a key (the key has the Host as
    /// sent, which the forwarded host follows, and the scheme).
    const SAME_FOR_KEY: [&'static str; 3] = ["host", "x-forwarded-host", "x-forwarded-proto"];

    pub(super) fn of(list: &HeaderList<'_>, keyed: &[String]) -> SentNames {
        let mut s = SentNames { hashes: [0; 12], len: 0, overflow: false };
        for h in list.iter() {
            let name = h.name.as_bytes();
            if keyed.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(name))
                || Self::SAME_FOR_KEY.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(name))
            {
                continue;
            }
            if usize::from(s.len) == s.hashes.len() {
                s.overflow = true;
                break;
            }
            s.hashes[usize::from(s.len)] = name_hash(name);
            s.len += 1;
        }
        s
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.overflow || self.hashes[..usize::from(self.len)].contains(&name_hash(name))
    }
}

/// FNV-1a over the ASCII-lowercased name (collisions only make the cache more careful).
fn name_hash(name: &[u8]) -> u32 {
    name.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0193))
}

/// What the cache says of a cacheable request.
pub(super) enum Lookup<'g> {
    /// A fresh stored response answers it.
    Hit(Rc<Stored>),
    /// It goes upstream, with what the cache does with the answer.
    Go(Option<CachePlan<'g>>),
}

/// Phase `cache`: looks up a cacheable request (`rule` applies) by its key: the route, the
/// Host as sent, the path and query, and every value of every keyed header as it goes upstream
/// (after the policies, in `sent`). Sets the status the client sees (`x-cache-status`) and the
/// record's.
/// `filed`: the path as routing reads it, under which stored responses are filed.
pub(super) fn lookup<'g>(
    worker: &Worker,
    rule: &'g ringway_policy::CacheRule,
    (route, head, filed): (&crate::snapshot::Route, &RequestHead<'_>, &str),
    sent: &HeaderList<'_>,
    cx: Option<&mut ringway_policy::Context>,
    rec: &mut Record,
) -> Lookup<'g> {
    let no_store = head.headers("cache-control").any(|v| has_token(v, "no-store"));
    let no_cache = head.headers("cache-control").any(|v| has_token(v, "no-cache"))
        || head.headers("pragma").any(|v| has_token(v, "no-cache"));
    // An authenticated request is stored only where `Authorization` would be: the response
    // may be the caller's own.
    let auth = head.header("authorization").is_some() || cx.as_ref().is_some_and(|c| c.identity.is_some());
    let keyed = rule.keyed.iter().flat_map(|n| {
        sent.iter().filter(move |h| h.name.eq_ignore_ascii_case(n)).map(|h| Some(&*h.value)).chain([None])
    });
    // The scheme the client used: an origin may answer `http` and `https` differently.
    let scheme = sent.iter().find(|h| h.name == "x-forwarded-proto").map_or(&b"http"[..], |h| &*h.value);
    let at = (head.authority.unwrap_or(b""), head.path, head.query);
    let key = worker.cache.borrow().key(&route.id, scheme, at, keyed);
    // The policies' clock when they read it (a rate limit), else one read here.
    let mut cx = cx;
    let now = cx.as_deref_mut().map_or_else(|| worker.clock.unix_ms(), ringway_policy::Context::now_ms);
    let found = if no_cache || no_store { None } else { worker.cache.borrow().get(key) };
    let usable = found.filter(|s| !auth || s.auth_ok);
    let (status, shown) = match &usable {
        Some(s) if s.is_fresh(now) => (CacheStatus::Hit, "HIT"),
        _ if no_store || no_cache => (CacheStatus::Bypass, "BYPASS"),
        Some(_) => (CacheStatus::Expired, "EXPIRED"),
        None => (CacheStatus::Miss, "MISS"),
    };
    if let Some(c) = cx {
        c.extras.text = Some(("x-cache-status", shown));
    }
    rec.cache = status;
    match usable {
        Some(s) if status == CacheStatus::Hit => Lookup::Hit(s),
        stale => Lookup::Go(Some(CachePlan {
            sent: SentNames::of(sent, &rule.keyed),
            key,
            store: head.method == "GET" && !no_store,
            coalesce: !no_cache,
            generation: worker.cache.borrow().generation(&route.id, filed),
            stale,
            auth,
            rule,
            path: filed.to_string(),
        })),
    }
}

/// A request on a cached route that the cache does not take (a method or a body it does not
/// keep).
pub(super) fn bypass(cx: Option<&mut ringway_policy::Context>, rec: &mut Record) {
    if let Some(c) = cx {
        c.extras.text = Some(("x-cache-status", "BYPASS"));
    }
    rec.cache = CacheStatus::Bypass;
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',').any(|p| {
        let p = p.trim_ascii();
        let name = p.split(|b| *b == b'=').next().unwrap_or(p).trim_ascii();
        name.eq_ignore_ascii_case(token.as_bytes())
    })
}

/// After a successful unsafe request on a cached route: what this worker stored for the path
/// goes at once, and the other workers are told through the control thread.
pub(super) fn after_unsafe(worker: &Worker, plan: &Plan<'_>, status: u16) {
    let Some(p) = plan.invalidate.as_deref().filter(|_| status < 400) else { return };
    worker.cache.borrow_mut().invalidate(&plan.route.id, p);
    if let Some(tx) = &worker.invalidations {
        let inv = crate::worker::Invalidate { route: plan.route.id.clone(), path: p.to_string(), from: worker.ctx.id };
        let _ = tx.send(inv);
    }
}

/// A response the cache may keep: its body collected while it streams, within the worker's
/// budget for captures (held until the capture ends, however it ends).
pub(super) struct Capture {
    body: Vec<u8>,
    freshness: crate::cache::Freshness,
    headers: crate::cache::StoredHeaders,
    len: u64,
    _held: crate::cache::CaptureReservation,
}

impl Capture {
    /// Starts collecting when the plan stores, the response head allows it, and the body has a
    /// known length within the rule's and the worker's budget.
    pub(super) fn begin(worker: &Worker, plan: &Plan<'_>, head: &ResponseHead<'_>, body: BodyKind) -> Option<Capture> {
        let c = plan.cache.as_ref()?;
        let BodyKind::Length(n) = body else { return None };
        if !c.store || n > c.rule.max_body {
            return None;
        }
        let (freshness, headers) = cacheable(head, c, worker.clock.unix_ms()).filter(|(f, _)| !c.auth || f.auth_ok)?;
        let held = worker.cache.borrow().reserve_capture(n)?;
        Some(Capture { body: Vec::with_capacity(n as usize), freshness, headers, len: n, _held: held })
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        self.body.extend_from_slice(data);
    }

    /// Stores the response whose body was collected whole.
    pub(super) fn store(self, worker: &Worker, plan: &Plan<'_>, status: u16) {
        let Some(c) = plan.cache.as_ref() else { return };
        if self.body.len() as u64 != self.len {
            return;
        }
        let f = self.freshness;
        let stored = Stored {
            status,
            headers: self.headers,
            body: self.body,
            stored_ms: worker.clock.unix_ms(),
            age_s: f.age_s,
            fresh_ms: f.fresh_ms,
            stale_if_error_ms: f.stale_if_error_ms,
            auth_ok: f.auth_ok,
            route: Box::from(plan.route.id.as_str()),
            path: Box::from(c.path.as_str()),
        };
        worker.cache.borrow_mut().insert(c.key, stored, c.generation);
    }
}

/// Removes this worker's in-flight mark of a cache key and wakes the requests waiting on it.
pub(super) struct Inflight<'w> {
    pub(super) worker: &'w Worker,
    pub(super) key: u64,
    pub(super) done: Rc<LocalEvent>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.worker.cache.borrow_mut().inflight.remove(&self.key);
        self.done.fire();
    }
}

/// Answers from a stored response. Returns whether the connection may be reused.
pub(super) async fn serve_stored(
    worker: &Worker,
    conn: &mut Conn,
    stored: &Stored,
    (request_id, is_head, keep): (&[u8], bool, bool),
    chain: Layered<'_>,
    extras: Option<&ringway_policy::ResponseExtras>,
) -> bool {
    let now = worker.clock.unix_ms();
    let close = conn.down.write_stored(stored, now, request_id, !keep, chain, extras, &worker.spares);
    conn.rec.status = stored.status;
    conn.rec.bytes_out = if is_head { 0 } else { stored.body.len() as u64 };
    let r = conn.down.flush(worker).await;
    if r.is_err() {
        conn.rec.unsent();
    }
    !close && r.is_ok()
}

/// Whether a response head allows storing, and for how long; with the header fields to keep.
/// A response that varies on a header field that reached the upstream but is not in the key
/// is not stored: the key could not tell its variants apart.
fn cacheable(
    head: &ResponseHead<'_>,
    plan: &CachePlan<'_>,
    now_ms: u64,
) -> Option<(crate::cache::Freshness, crate::cache::StoredHeaders)> {
    for h in head.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("vary")) {
        for name in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|n| !n.is_empty()) {
            let keyed = plan.rule.keyed.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(name));
            // Authorization reaches the upstream whenever a client sends it: a response made
            // without it must not answer requests with it either.
            if !keyed && (plan.sent.contains(name) || name.eq_ignore_ascii_case(b"authorization")) {
                return None;
            }
        }
    }
    let f = crate::cache::freshness(head.status(), &head.headers, now_ms, plan.rule.ttl_ms)?;
    Some((f, crate::cache::stored_headers(&head.headers)))
}

/// The stored copy `stale-if-error` allows for this request now.
pub(super) fn usable_stale(worker: &Worker, plan: &Plan<'_>) -> Option<Rc<Stored>> {
    let now = worker.clock.unix_ms();
    plan.cache.as_ref()?.stale.clone().filter(|s| s.usable_on_error(now))
}

/// Answers with a stale stored copy because the upstream failed; closes the connection.
pub(super) async fn serve_stale(worker: &Worker, conn: &mut Conn, plan: &Plan<'_>, stale: &Stored) -> bool {
    let mut extras = plan.cx.as_ref().map(|c| c.extras).unwrap_or_default();
    extras.text = Some(("x-cache-status", "STALE"));
    conn.rec.cache = crate::record::CacheStatus::Stale;
    let info = (plan.request_id.as_bytes(), plan.is_head, false);
    serve_stored(worker, conn, stale, info, plan.chains, Some(&extras)).await
}
