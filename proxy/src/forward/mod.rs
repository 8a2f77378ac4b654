//! One request, from a parsed head to the end of the response: route, run the policy chain,
//! pick a target, exchange with the upstream (with one retry on a stale pooled connection when
//! that is safe), and stream bodies both ways without holding them whole.
//!
//! This module reads the head and plans the request (`handle`, `prepare`); `exchange` talks
//! to the upstream and relays the response, `body` reads request bodies, `cached` holds what
//! the response cache needs of a request.
//!
//! Hot path: no locks, no blocking, no info-level logging.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ringway_policy::{Context, HeaderList, Layered, RequestInfo, Verdict};

mod body;
mod cached;
mod exchange;
mod finish;

use self::cached::{serve_stored, Inflight, SentNames};
use self::exchange::exchange;
use self::finish::finish;
pub use self::finish::finish_unparsed;
use crate::cache::Stored;
use crate::conn::Conn;
use crate::h1::head::{classify, host_without_port, BodyKind, HeadError, Known};
use crate::h1::path::{canonical, parse_target, routing_key, Target};
use crate::h1::request;
use crate::h1::write::{push_framing, push_header, push_request_line};
use crate::io::{linger, write_all};
use crate::lb::{hash64, HashOn, LbKind};
pub use crate::record::RequestId;
use crate::record::{method_index, CacheStatus, End, LimitOutcome, Record, RequestText, Trace};
use crate::respond::{encode_reply, fate, Failure, Fate, Phase, ProxyError};
use crate::snapshot::{Route, Upstream};
use crate::worker::{Generation, LocalEvent, SharedLb, Worker};

/// Most header fields parsed; `ServerLimits::max_headers` may set a lower cap.
pub const MAX_HEADERS: usize = 128;

/// What `prepare` decided for a request that goes upstream.
struct Plan<'g> {
    route: &'g Route,
    /// The route's policies over the global ones.
    chains: Layered<'g>,
    upstream: &'g Upstream,
    lb: SharedLb,
    target: usize,
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

/// The client address behind `trusted` proxies: the `trusted`th entry from the right of the
/// inbound `X-Forwarded-For` list (the one the farthest trusted proxy appended). A shorter
/// list, or an entry that is not an address (with or without a port), gives the peer.
fn client_address(xff: &[u8], peer: std::net::IpAddr, trusted: u32) -> std::net::IpAddr {
    if trusted == 0 {
        return peer;
    }
    let Ok(list) = std::str::from_utf8(xff) else { return peer };
    let Some(entry) = list.rsplit(',').nth(trusted as usize - 1) else { return peer };
    let entry = entry.trim();
    entry
        .parse::<std::net::IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| entry.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>())
        .unwrap_or(peer)
}

/// A request answered without the upstream.
struct Early<'g> {
    error: Option<Failure>,
    reply: Option<ringway_policy::Reply>,
    route: Option<&'g Route>,
    chains: Option<Layered<'g>>,
    body: BodyKind,
    keep_alive: bool,
    is_head: bool,
    request_id: RequestId,
    cx: Option<Context>,
    /// A fresh stored response that answers the request.
    cached: Option<Rc<Stored>>,
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',').any(|p| {
        let p = p.trim_ascii();
        let name = p.split(|b| *b == b'=').next().unwrap_or(p).trim_ascii();
        name.eq_ignore_ascii_case(token.as_bytes())
    })
}

/// Handles the request whose head is the first `head_len` bytes of `conn.rbuf`. Returns
/// whether the connection may carry another request. Every request ends here, in [`finish`].
pub async fn handle(worker: &Rc<Worker>, conn: &mut Conn, head_len: usize) -> bool {
    worker.counters.requests.set(worker.counters.requests.get() + 1);
    let gauges = &worker.metrics.gauges;
    gauges.inflight.add(1);
    let generation = worker.generation();
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    let mut rec = Record::new(conn.first_byte.take().unwrap_or_else(monoio::time::Instant::now));
    let mut text = std::mem::take(&mut conn.text);
    text.clear();
    let prepared = prepare(worker, &generation, conn, head_len, &mut out, &mut rec, &mut text);
    conn.rec = rec;
    conn.text = text;
    let (keep, route, target) = match prepared {
        Ok(mut plan) => {
            conn.consume(head_len);
            conn.rec.request_id = plan.request_id;
            let keep = go_upstream(worker, conn, &mut plan, out).await;
            (keep, Some(plan.route), Some((plan.upstream, plan.target)))
        }
        Err(early) => {
            conn.rec.request_id = early.request_id;
            let route = early.route;
            (answer_early(worker, conn, *early, head_len, out).await, route, None)
        }
    };
    finish(worker, conn, route, target);
    gauges.inflight.set(gauges.inflight.get().saturating_sub(1));
    keep
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
                let now = unix_ms();
                let hit = worker.cache.borrow().get(key).filter(|s| s.is_fresh(now) && (!auth || s.auth_ok));
                if let Some(stored) = hit {
                    if let Some(cx) = plan.cx.as_mut() {
                        cx.extras.text = Some(("x-cache-status", "HIT"));
                    }
                    conn.rec.cache = CacheStatus::Hit;
                    let keep = plan.keep_alive && !worker.draining.get();
                    let extras = plan.cx.as_ref().map(|c| &c.extras);
                    let info = (plan.request_id.as_bytes(), plan.is_head, keep);
                    return serve_stored(worker, conn, out, &stored, info, plan.chains, extras).await;
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
async fn answer_early(worker: &Worker, conn: &mut Conn, early: Early<'_>, head_len: usize, mut out: Vec<u8>) -> bool {
    // Keep the connection only when the unread body is already here in full.
    let body_here = match early.body {
        BodyKind::None => Some(0),
        BodyKind::Length(n) if (conn.rbuf.len() - head_len) as u64 >= n => Some(n as usize),
        _ => None,
    };
    // An answer of the gateway's own: neither a policy's nor the cache's.
    let answered = early.reply.is_some() || early.cached.is_some();
    let error = (!answered).then(|| early.error.unwrap_or(Failure::new(ProxyError::NoRoute, Phase::Route)));
    let fate = fate(error.as_ref(), early.keep_alive, body_here.is_some(), worker.draining.get());
    let keep = fate == Fate::Keep;
    conn.consume(head_len + body_here.unwrap_or(0));
    conn.rec.bytes_in = body_here.unwrap_or(0) as u64;
    if let (Some(stored), Some(chains)) = (&early.cached, early.chains) {
        let extras = early.cx.as_ref().map(|c| &c.extras);
        let info = (early.request_id.as_bytes(), early.is_head, keep);
        return serve_stored(worker, conn, out, stored, info, chains, extras).await;
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
    let chain = early.chains;
    let extras = early.cx.as_ref().map(|c| &c.extras);
    encode_reply(&mut out, &reply, early.request_id.as_bytes(), !keep, early.is_head, chain, extras);
    let (r, out) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
    conn.out = out;
    if !keep && r.is_ok() {
        linger(&mut conn.stream).await;
    }
    if r.is_err() {
        conn.rec.cut(End::ClientAbort, "client_write_failed");
    }
    keep && r.is_ok()
}

/// Parses and checks the head, routes, runs the request policies, picks a target and writes the
/// upstream request head into `out`. Synchronous: borrows the receive buffer and snapshot.
fn prepare<'g>(
    worker: &Worker,
    generation: &'g Generation,
    conn: &Conn,
    head_len: usize,
    out: &mut Vec<u8>,
    rec: &mut Record,
    text: &mut RequestText,
) -> Result<Plan<'g>, Box<Early<'g>>> {
    let head = &conn.rbuf[..head_len];
    let mut early = Early {
        error: None,
        reply: None,
        route: None,
        chains: None,
        body: BodyKind::None,
        keep_alive: false,
        is_head: false,
        request_id: RequestId::generated(worker.next_request_id()),
        cx: None,
        cached: None,
    };
    let fail = |mut early: Early<'g>, e: HeadError| -> Result<Plan<'g>, Box<Early<'g>>> {
        early.error = Some(Failure::new(ProxyError::Head(e), Phase::Head));
        early.keep_alive = false;
        Err(Box::new(early))
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let req = match request::parse(head, &mut storage, worker.limits.max_headers) {
        Ok(r) => r,
        Err(refused) => {
            early.is_head = refused.is_head;
            return fail(early, refused.error);
        }
    };
    let (method, target, http10, body) = (req.method, req.target, req.http10, req.body);
    let (opts, expect_continue, te_accepts) = (req.connection, req.expect_continue, req.te_accepts);
    let headers = req.headers;
    early.is_head = method == "HEAD";
    early.body = body;
    rec.method = method_index(method);
    if let Some(id) = req.request_id.and_then(RequestId::from_client) {
        early.request_id = id;
    }
    let mut host = req.host;
    // Inbound X-Forwarded-For lines, joined in order; kept only when proxies in front are
    // trusted (otherwise the client's claim is replaced).
    let trusted_hops = if conn.trusted { worker.limits.trusted_hops } else { 0 };
    let mut inbound_xff: Option<Vec<u8>> = None;
    if trusted_hops > 0 {
        for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")) {
            if !h.value.trim_ascii().is_empty() {
                let joined = inbound_xff.get_or_insert_with(Vec::new);
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(h.value.trim_ascii());
            }
        }
    }
    let Target { authority, path: raw_path, query } = match parse_target(target) {
        Ok(t) => t,
        Err(e) => return fail(early, e),
    };
    if worker.log.as_ref().is_some_and(|l| l.enabled()) {
        let host = authority.map(str::as_bytes).or(host).unwrap_or(b"");
        text.set(method, host, raw_path, query.filter(|_| worker.limits.log_query));
    }
    // RFC 9112 3.2.2: the authority of an absolute-form target replaces Host, for routing and
    // for the upstream.
    let routed_host = match authority {
        Some(a) => {
            if let Some(h) = headers.iter_mut().find(|h| classify(h.name) == Known::Host) {
                h.value = a.as_bytes();
            }
            Some(a.as_bytes())
        }
        None => host,
    };
    // An HTTP/1.0 request may come without Host: its absolute-form authority stands in.
    let host_header_sent = req.host.is_some();
    host = routed_host;
    let host_name = match routed_host.map(host_without_port) {
        Some(Ok(h)) => h,
        Some(Err(e)) => return fail(early, e),
        None => "",
    };
    let keep_alive = req.keep_alive;
    early.keep_alive = keep_alive;
    let client_ip = match &inbound_xff {
        Some(list) => client_address(list, conn.peer.ip(), trusted_hops),
        None => conn.peer.ip(),
    };
    rec.client_ip = client_ip;

    // Route.
    let mut lower = [0u8; 256];
    let host_lc = &mut lower[..host_name.len()];
    host_lc.copy_from_slice(host_name.as_bytes());
    host_lc.make_ascii_lowercase();
    // Lower-casing ASCII keeps the text valid UTF-8.
    let host_lc = std::str::from_utf8(host_lc).unwrap_or("");
    let snapshot = &generation.snapshot;
    let find_header = |name: &str| headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    // One canonical path for routing, policies, cache keys and forwarding (see crate::h1::path).
    let global = &snapshot.path_normalization;
    let path = match canonical(raw_path, global) {
        Ok(p) => p,
        Err(e) => return fail(early, e),
    };
    let Some((route, rank)) =
        snapshot.router.find_ranked(host_lc, &routing_key(&path, global), |r| r.admits(method, find_header))
    else {
        early.error = Some(Failure::new(ProxyError::NoRoute, Phase::Route));
        return Err(Box::new(early));
    };
    let route: &Route = route;
    // A kept `%2F` stays inside its segment here, but an origin may decode it before routing:
    // the path read with it decoded must not belong to a route that outranks this one.
    if global.escaped_slashes == ringway_policy::EscapedSlashes::Keep
        && memchr::memmem::find(path.as_bytes(), b"%2F").is_some()
    {
        let decoded = path.replace("%2F", "/");
        let other =
            snapshot.router.find_ranked(host_lc, &routing_key(&decoded, global), |r| r.admits(method, find_header));
        if other.is_some_and(|(r, other_rank)| !std::ptr::eq(&**r, route) && other_rank > rank) {
            return fail(early, HeadError::Bad("an encoded '/' in the path would select another route once decoded"));
        }
    }
    let own = snapshot.path_normalization(route);
    let path = if own == global {
        path
    } else {
        // The route reads paths its own way: that reading must select the same route.
        let mine = match canonical(raw_path, own) {
            Ok(p) => p,
            Err(e) => return fail(early, e),
        };
        let again = snapshot.router.find(host_lc, &routing_key(&mine, own), |r| r.admits(method, find_header));
        if !again.is_some_and(|r| std::ptr::eq(&**r, route)) {
            return fail(early, HeadError::Bad("the route's path_normalization reads this path as another route's"));
        }
        mine
    };
    let path: &str = &path;
    let chains = snapshot.chains(route);
    // Stored responses are filed, and invalidated, under the path as routing reads it, so a
    // POST to `/a` also drops what `/a/` and `/a;x` stored (cached routes only).
    let filed = match chains.cache() {
        Some(_) => routing_key(path, own),
        None => std::borrow::Cow::Borrowed(path),
    };
    early.route = Some(route);
    early.chains = Some(chains);
    let max_body = route.max_body_bytes.or(worker.limits.max_body_bytes);
    if let (BodyKind::Length(n), Some(limit)) = (body, max_body) {
        if n > limit {
            early.error = Some(Failure::new(ProxyError::BodyTooLarge { limit }, Phase::Head));
            early.keep_alive = false;
            return Err(Box::new(early));
        }
    }

    let mut request_id = early.request_id;
    // A cacheable request: only keyed headers reach the upstream (see crate::cache).
    // A request with a body is never cacheable: the body is not part of the key.
    let no_body = matches!(body, BodyKind::None | BodyKind::Length(0));
    let rule = chains.cache().filter(|r| no_body && ((method == "GET" && r.get) || (method == "HEAD" && r.head)));
    let auth = rule.is_some() && find_header("authorization").is_some();
    if rule.is_some() {
        // Nothing the client chose reaches the upstream of a cacheable request, its id included.
        request_id = RequestId::generated(worker.next_request_id());
        early.request_id = request_id;
    }
    // An unsafe method on a cached route invalidates what this worker stored for the path.
    let invalidate = (chains.cache().is_some() && !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE"))
        .then(|| filed.to_string());
    // Headers for the upstream: end-to-end fields, then the proxy's own, then the policies.
    // Declared before the list, which borrows it.
    let mut traceparent = [0u8; 55];
    let mut list: HeaderList<'_> = worker.spares.headers();
    for h in headers.iter() {
        match classify(h.name) {
            // `Connection` never removes Host.
            Known::Host => list.push(h.name, h.value),
            // The trace goes on with the gateway's own span (below).
            Known::Other if h.name.eq_ignore_ascii_case("traceparent") => {
                if let Some(t) = Trace::from_traceparent(h.value).filter(|_| !rec.trace_inbound) {
                    rec.trace = t;
                    rec.trace_inbound = true;
                }
            }
            Known::Other => {
                let keyed = rule.is_some_and(|r| r.keyed.iter().any(|k| k.eq_ignore_ascii_case(h.name)));
                // A keyed header always goes (whatever `Connection` says), so the key is what
                // the upstream saw; on a cacheable request nothing else the client sent goes
                // but Authorization (stored only when the response says it is shared).
                let send =
                    keyed || (!opts.lists(h.name) && (rule.is_none() || h.name.eq_ignore_ascii_case("authorization")));
                if send {
                    list.push(h.name, h.value);
                }
            }
            _ => {}
        }
    }
    // The client asked to hear from the origin before it sends the body: forward the
    // expectation when the body may not be here yet (the origin's interim or final answer is
    // relayed); a sized body already received in full needs no permission. HTTP/1.0 clients'
    // expectations are ignored (they cannot receive an interim answer).
    let body_here = (conn.rbuf.len() - head_len) as u64;
    let expect_continue = expect_continue
        && !http10
        && match body {
            BodyKind::Length(n) => body_here < n,
            BodyKind::Chunked => true,
            BodyKind::None | BodyKind::UntilClose => false,
        };
    if expect_continue {
        list.push("expect", &b"100-continue"[..]);
    }
    let xff: std::borrow::Cow<'_, [u8]> = match inbound_xff {
        Some(mut v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.peer_ip.as_bytes());
            v.into()
        }
        None => conn.peer_ip.as_bytes().into(),
    };
    list.push("x-forwarded-for", xff);
    list.push("x-forwarded-proto", &b"http"[..]);
    if let Some(h) = host {
        list.push("x-forwarded-host", h);
    }
    list.push("x-request-id", request_id.as_bytes());
    if !rec.trace_inbound {
        rec.trace.trace_id[..8].copy_from_slice(&worker.random().to_be_bytes());
        rec.trace.trace_id[8..].copy_from_slice(&worker.random().to_be_bytes());
    }
    rec.trace.span_id = worker.random().to_be_bytes();
    traceparent.copy_from_slice(&rec.trace.traceparent());
    list.push("traceparent", &traceparent[..]);
    let info = RequestInfo {
        method,
        host: host_lc,
        path,
        query,
        client_ip,
        route_id: &route.id,
        client_headers: ringway_policy::ClientHeaders(&find_header),
    };
    let mut cx = None;
    if !chains.is_empty() {
        let c = cx.insert(Context::new(worker.policy_state.clone()));
        if let Verdict::Respond(r) = chains.on_request(&info, &mut list, c) {
            rec.end = End::Policy;
            rec.limit = match c.answered_by {
                Some("rate_limit") => LimitOutcome::RateLimited,
                Some("concurrency_limit") => LimitOutcome::ConcurrencyLimited,
                _ => LimitOutcome::Passed,
            };
            early.reply = Some(r);
            early.cx = cx;
            return Err(Box::new(early));
        }
    }
    let mut cache = None;
    if chains.cache().is_some() {
        let status = match rule {
            None => "BYPASS",
            Some(rule) => {
                let all = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
                let no_store = all("cache-control").any(|h| has_token(h.value, "no-store"));
                let no_cache = all("cache-control").any(|h| has_token(h.value, "no-cache"))
                    || all("pragma").any(|h| has_token(h.value, "no-cache"));
                // Every value of every keyed header, in order, as they go upstream (after the
                // policies); the Host as sent (port included); the route, so routes told apart
                // by method or header constraints never share an entry.
                let sent = &list;
                let keyed = rule.keyed.iter().flat_map(|n| {
                    sent.iter().filter(move |h| h.name.eq_ignore_ascii_case(n)).map(|h| Some(&*h.value)).chain([None])
                });
                let key = worker.cache.borrow().key(&route.id, host.unwrap_or(b""), path, query, keyed);
                // The policies' clock when they read it (a rate limit), else one read here.
                let now = cx.as_mut().map_or_else(unix_ms, Context::now_ms);
                let found = if no_cache || no_store { None } else { worker.cache.borrow().get(key) };
                let usable = found.filter(|s| !auth || s.auth_ok);
                match usable {
                    Some(s) if s.is_fresh(now) => {
                        if let Some(c) = cx.as_mut() {
                            c.extras.text = Some(("x-cache-status", "HIT"));
                        }
                        rec.cache = CacheStatus::Hit;
                        early.cached = Some(s);
                        early.cx = cx;
                        return Err(Box::new(early));
                    }
                    stale => {
                        let generation = worker.cache.borrow().generation(&route.id, &filed);
                        let status = if no_store || no_cache {
                            "BYPASS"
                        } else if stale.is_some() {
                            "EXPIRED"
                        } else {
                            "MISS"
                        };
                        cache = Some(CachePlan {
                            sent: SentNames::of(&list, &rule.keyed),
                            key,
                            store: method == "GET" && !no_store,
                            coalesce: !no_cache,
                            generation,
                            stale,
                            auth,
                            rule,
                            path: filed.to_string(),
                        });
                        status
                    }
                }
            }
        };
        if let Some(c) = cx.as_mut() {
            c.extras.text = Some(("x-cache-status", status));
        }
        rec.cache = match status {
            "MISS" => CacheStatus::Miss,
            "EXPIRED" => CacheStatus::Expired,
            _ => CacheStatus::Bypass,
        };
    }

    // Target.
    let upstream = snapshot.upstream(route.upstream);
    let key = match &upstream.lb {
        LbKind::ConsistentHash(HashOn::Header(name)) => match find_header(name) {
            Some(v) => hash64(v),
            None => ip_hash(client_ip),
        },
        LbKind::ConsistentHash(HashOn::Ip) => ip_hash(client_ip),
        _ => 0,
    };
    let lb = worker.lb_state(upstream);
    let Some(target) = lb.borrow_mut().pick(&upstream.lb, &upstream.weights, &upstream.ring, key) else {
        early.error = Some(Failure::new(ProxyError::NoTarget, Phase::Pick));
        return Err(Box::new(early));
    };

    // Serialise.
    push_request_line(out, method, route.forward_path(path), query);
    for h in list.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    worker.spares.give_headers(list);
    if !host_header_sent {
        match host {
            Some(h) => push_header(out, b"host", h),
            None => push_header(out, b"host", upstream.targets[target].to_string().as_bytes()),
        }
    }
    push_framing(out, body, b"", false);
    out.extend_from_slice(b"\r\n");
    Ok(Plan {
        route,
        chains,
        invalidate,
        upstream,
        lb,
        target,
        body,
        keep_alive,
        expect_continue,
        is_head: early.is_head,
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
        http10,
        te_accepts,
        max_body,
        request_id,
        cx,
        cache,
    })
}

fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash64(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash64(&v6.octets()),
    }
}
