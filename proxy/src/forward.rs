//! One request, from a parsed head to the end of the response: route, run the policy chain,
//! pick a target, exchange with the upstream (with one retry on a stale pooled connection when
//! that is safe), and stream bodies both ways without holding them whole.
//!
//! Hot path: no locks, no blocking, no info-level logging.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;
use ringway_policy::{Context, HeaderList, Layered, RequestInfo, Verdict};

use crate::cache::Stored;
use crate::conn::Conn;
use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::head::{
    check_raw_head, classify, host_without_port, parse_content_length, BodyKind, ConnectionOptions, HeadError, Known,
};
use crate::h1::path::{canonical, parse_target, routing_key, Target};
use crate::io::{encode_chunk, linger, push_dec, read_more, write_all, write_all_untimed, write_range};
use crate::lb::{hash64, HashOn, LbKind};
use crate::respond::{encode_cached, encode_reply, push_header, ProxyError};
use crate::snapshot::{Route, Upstream};
use crate::upstream::{encode_response, read_response, ClientSide};
use crate::worker::{Generation, LocalEvent, SharedLb, Worker};

/// Largest upstream request head written without a timer (well under any socket send buffer).
const UNTIMED_WRITE: usize = 8 * 1024;

/// Receive buffer for an upstream response: the head and a small body in one read.
const RESPONSE_BUF: usize = 16 * 1024;
/// Receive buffer while a large response body streams: fewer, larger reads and writes.
const LARGE_BODY_BUF: usize = 64 * 1024;

/// Most header fields parsed; `ServerLimits::max_headers` may set a lower cap.
pub const MAX_HEADERS: usize = 128;

/// A request id: the client's (when sane) or a generated one.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; 64],
    len: u8,
}

impl RequestId {
    fn generated(id: [u8; 32]) -> Self {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(&id);
        RequestId { buf, len: 32 }
    }

    fn from_client(v: &[u8]) -> Option<Self> {
        if v.is_empty()
            || v.len() > 64
            || !v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return None;
        }
        let mut buf = [0u8; 64];
        buf[..v.len()].copy_from_slice(v);
        Some(RequestId { buf, len: v.len() as u8 })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

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

/// The names of the header fields a cacheable request sent upstream that are not part of its
/// cache key (Authorization, the proxy's own per-request fields, fields the policies added):
/// a response that varies on one of them must not be stored under the key. Fixed size, no
/// allocation; past its capacity it answers "sent" for every name.
struct SentNames {
    hashes: [u32; 12],
    len: u8,
    overflow: bool,
}

impl SentNames {
    /// Fields whose value is the same for every request sharing a key (the key has the Host as
    /// sent; the forwarded host follows it, the scheme is fixed).
    const SAME_FOR_KEY: [&'static str; 3] = ["host", "x-forwarded-host", "x-forwarded-proto"];

    fn of(list: &HeaderList<'_>, keyed: &[String]) -> SentNames {
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
    error: Option<ProxyError>,
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

/// Removes this worker's in-flight mark of a cache key and wakes the requests waiting on it.
struct Inflight<'w> {
    worker: &'w Worker,
    key: u64,
    done: Rc<LocalEvent>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.worker.cache.borrow_mut().inflight.remove(&self.key);
        self.done.fire();
    }
}

/// Answers from a stored response. Returns whether the connection may be reused.
async fn serve_stored(
    worker: &Worker,
    conn: &mut Conn,
    mut out: Vec<u8>,
    stored: &Stored,
    (request_id, is_head, keep): (&[u8], bool, bool),
    chain: Layered<'_>,
    extras: Option<&ringway_policy::ResponseExtras>,
) -> bool {
    out.clear();
    encode_cached(&mut out, stored, unix_ms(), request_id, !keep, is_head, chain, extras, &worker.spares);
    let (r, out) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
    conn.out = out;
    keep && r.is_ok()
}

/// Handles the request whose head is the first `head_len` bytes of `conn.rbuf`. Returns
/// whether the connection may carry another request.
pub async fn handle(worker: &Rc<Worker>, conn: &mut Conn, head_len: usize) -> bool {
    worker.counters.requests.set(worker.counters.requests.get() + 1);
    let generation = worker.generation();
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    match prepare(worker, &generation, conn, head_len, &mut out) {
        Ok(mut plan) => {
            conn.consume(head_len);
            let mut _leader = None;
            if let Some((key, auth)) = plan.cache.as_ref().filter(|c| c.store && c.coalesce).map(|c| (c.key, c.auth)) {
                let waiting = worker.cache.borrow().inflight.get(&key).cloned();
                match waiting {
                    Some(done) => {
                        // Another request of this worker is fetching it: wait, then answer
                        // from what it stored (or go upstream if it stored nothing).
                        let _ = monoio::time::timeout(Duration::from_secs(30), done.wait()).await;
                        let now = unix_ms();
                        let hit = worker.cache.borrow().get(key).filter(|s| s.is_fresh(now) && (!auth || s.auth_ok));
                        if let Some(stored) = hit {
                            if let Some(cx) = plan.cx.as_mut() {
                                cx.extras.text = Some(("x-cache-status", "HIT"));
                            }
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
            exchange(worker, conn, &plan, out).await
        }
        Err(early) => {
            // Keep the connection only when the unread body is already here in full.
            let body_here = match early.body {
                BodyKind::None => Some(0),
                BodyKind::Length(n) if (conn.rbuf.len() - head_len) as u64 >= n => Some(n as usize),
                _ => None,
            };
            let keep = early.keep_alive && body_here.is_some() && !worker.draining.get();
            conn.consume(head_len + body_here.unwrap_or(0));
            if let (Some(stored), Some(chains)) = (&early.cached, early.chains) {
                let extras = early.cx.as_ref().map(|c| &c.extras);
                let info = (early.request_id.as_bytes(), early.is_head, keep);
                return serve_stored(worker, conn, out, stored, info, chains, extras).await;
            }
            let reply = early
                .reply
                .unwrap_or_else(|| early.error.map(|e| e.reply()).unwrap_or_else(|| ProxyError::NoRoute.reply()));
            let chain = early.chains;
            let extras = early.cx.as_ref().map(|c| &c.extras);
            encode_reply(&mut out, &reply, early.request_id.as_bytes(), !keep, early.is_head, chain, extras);
            let (r, out) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
            conn.out = out;
            if !keep && r.is_ok() {
                linger(&mut conn.stream).await;
            }
            keep && r.is_ok()
        }
    }
}

/// Parses and checks the head, routes, runs the request policies, picks a target and writes the
/// upstream request head into `out`. Synchronous: borrows the receive buffer and snapshot.
fn prepare<'g>(
    worker: &Worker,
    generation: &'g Generation,
    conn: &Conn,
    head_len: usize,
    out: &mut Vec<u8>,
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
        early.error = Some(ProxyError::Head(e));
        early.keep_alive = false;
        Err(Box::new(early))
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return fail(early, HeadError::Bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return fail(early, HeadError::TooManyHeaders),
        Err(e) => return fail(early, HeadError::Bad(describe(e))),
    }
    if let Err(e) = check_raw_head(head) {
        return fail(early, e);
    }
    let headers = req.headers;
    if headers.len() > worker.limits.max_headers {
        return fail(early, HeadError::TooManyHeaders);
    }
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return fail(early, HeadError::Version),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    early.is_head = method == "HEAD";

    // Pass 1: framing and connection-level fields.
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut opts = ConnectionOptions::default();
    let mut expect_continue = false;
    let mut te_accepts = 0u8;
    // Inbound X-Forwarded-For lines, joined in order; kept only when proxies in front are
    // trusted (otherwise the client's claim is replaced).
    let trusted_hops = if conn.trusted { worker.limits.trusted_hops } else { 0 };
    let mut inbound_xff: Option<Vec<u8>> = None;
    for h in headers.iter() {
        if h.name.as_bytes().contains(&b'_') {
            return fail(early, HeadError::Bad("'_' in a header name"));
        }
        match classify(h.name) {
            Known::Host => {
                hosts += 1;
                host = Some(h.value);
            }
            Known::ContentLength => {
                cl_count += 1;
                match parse_content_length(h.value) {
                    Some(n) => content_length = Some(n),
                    None => return fail(early, HeadError::Bad("invalid Content-Length")),
                }
            }
            Known::TransferEncoding => {
                te_count += 1;
                te = Some(h.value);
            }
            Known::Connection => {
                if let Err(e) = opts.add(h.value) {
                    return fail(early, e);
                }
            }
            Known::Expect => {
                if h.value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return fail(early, HeadError::Expectation);
                }
            }
            Known::RequestId => {
                if let Some(id) = RequestId::from_client(h.value) {
                    early.request_id = id;
                }
            }
            Known::Forwarded => {
                if trusted_hops > 0
                    && h.name.eq_ignore_ascii_case("x-forwarded-for")
                    && !h.value.trim_ascii().is_empty()
                {
                    let joined = inbound_xff.get_or_insert_with(Vec::new);
                    if !joined.is_empty() {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(h.value.trim_ascii());
                }
            }
            // `TE`: the transfer codings the client accepts besides chunked.
            Known::HopByHop if h.name.len() == 2 => te_accepts |= crate::upstream::accepted_codings(h.value),
            Known::HopByHop | Known::Other => {}
        }
    }
    if cl_count > 1 {
        return fail(early, HeadError::Bad("more than one Content-Length"));
    }
    let body = match (te, content_length) {
        (Some(_), Some(_)) => return fail(early, HeadError::Bad("both Transfer-Encoding and Content-Length")),
        (Some(_), None) if te_count > 1 => return fail(early, HeadError::Bad("more than one Transfer-Encoding")),
        (Some(_), None) if http10 => return fail(early, HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request")),
        (Some(v), None) => {
            if v.eq_ignore_ascii_case(b"chunked") {
                BodyKind::Chunked
            } else {
                return fail(early, HeadError::NotImplemented("only Transfer-Encoding: chunked is supported"));
            }
        }
        (None, Some(n)) => BodyKind::Length(n),
        (None, None) => BodyKind::None,
    };
    early.body = body;
    if hosts > 1 || (hosts == 0 && !http10) {
        return fail(early, HeadError::Bad("a request needs exactly one Host header"));
    }
    let Target { authority, path: raw_path, query } = match parse_target(target) {
        Ok(t) => t,
        Err(e) => return fail(early, e),
    };
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
    let host_header_sent = hosts > 0;
    host = routed_host;
    let host_name = match routed_host.map(host_without_port) {
        Some(Ok(h)) => h,
        Some(Err(e)) => return fail(early, e),
        None => "",
    };
    let keep_alive = if http10 { opts.keep_alive && !opts.close } else { !opts.close };
    early.keep_alive = keep_alive;
    let client_ip = match &inbound_xff {
        Some(list) => client_address(list, conn.peer.ip(), trusted_hops),
        None => conn.peer.ip(),
    };

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
        early.error = Some(ProxyError::NoRoute);
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
            early.error = Some(ProxyError::BodyTooLarge { limit });
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
    let mut list: HeaderList<'_> = worker.spares.headers();
    for h in headers.iter() {
        match classify(h.name) {
            // `Connection` never removes Host.
            Known::Host => list.push(h.name, h.value),
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
        early.error = Some(ProxyError::NoTarget);
        return Err(Box::new(early));
    };

    // Serialise.
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(route.forward_path(path).as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
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
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyKind::None | BodyKind::UntilClose => {}
    }
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

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (or white space before the colon, or obs-fold)",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash64(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash64(&v6.octets()),
    }
}

/// How far the request body has come.
struct BodyProgress {
    decoder: Option<ChunkedDecoder>,
    /// Bytes still to read (Content-Length bodies).
    remaining: u64,
    /// Body bytes seen so far (for the size cap).
    seen: u64,
    done: bool,
    /// Body bytes received, and time spent waiting for them (for the minimum rate: only the
    /// client's own time counts, not the upstream's).
    received: u64,
    waited: Duration,
}

impl BodyProgress {
    /// The deadline of the next read of the body, starting `now`: the idle timeout, or sooner
    /// when waiting any longer would take the body's average rate, once the grace period is
    /// spent, below the minimum.
    fn deadline(&self, limits: &crate::worker::ServerLimits, now: Instant) -> Instant {
        if limits.body_min_rate == 0 {
            return now + limits.body_timeout;
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / limits.body_min_rate);
        let left = earned.max(limits.body_grace).saturating_sub(self.waited);
        // A few milliseconds at least, so bytes already waiting in the socket are still read.
        now + left.clamp(Duration::from_millis(10), limits.body_timeout)
    }

    /// Reads more of the body from the client into `conn.rbuf` under [`Self::deadline`].
    async fn read(&mut self, conn: &mut Conn, limits: &crate::worker::ServerLimits) -> std::io::Result<usize> {
        let now = Instant::now();
        let buf = std::mem::take(&mut conn.rbuf);
        let (r, buf) = read_more(&mut conn.stream, buf, 16 * 1024, self.deadline(limits, now)).await;
        conn.rbuf = buf;
        if limits.body_min_rate > 0 {
            self.waited += now.elapsed();
        }
        if let Ok(n) = r {
            self.received += n as u64;
        }
        r
    }
}

/// Request bodies up to this size are read in full before the upstream is asked for a
/// connection, so a slow client holds no upstream connection (and the request can be retried).
const BUFFERED_BODY: usize = 64 * 1024;

/// How long the origin has to answer `Expect: 100-continue` before the body is sent anyway.
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Moves what `conn.rbuf` holds of the request body into `out` (encoded for the upstream),
/// consuming it. Fails on malformed framing or a body over its cap.
fn take_buffered_body(
    conn: &mut Conn,
    p: &mut BodyProgress,
    out: &mut Vec<u8>,
    max: Option<u64>,
) -> Result<(), ProxyError> {
    if p.done {
        return Ok(());
    }
    match &mut p.decoder {
        None => {
            let take = (conn.rbuf.len() as u64).min(p.remaining) as usize;
            out.extend_from_slice(&conn.rbuf[..take]);
            conn.consume(take);
            p.remaining -= take as u64;
            p.done = p.remaining == 0;
        }
        Some(d) => {
            let mut pos = 0;
            loop {
                match d.decode(&conn.rbuf, &mut pos).map_err(ProxyError::BadRequestBody)? {
                    Chunk::Data(r) => {
                        p.seen += r.len() as u64;
                        if let Some(limit) = max.filter(|l| p.seen > *l) {
                            return Err(ProxyError::BodyTooLarge { limit });
                        }
                        encode_chunk(out, &conn.rbuf[r]);
                    }
                    Chunk::NeedMore => break,
                    Chunk::Done => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        p.done = true;
                        break;
                    }
                }
            }
            conn.consume(pos);
        }
    }
    Ok(())
}

/// Sends the request (head already in `out`) and relays the response. Returns whether the
/// client connection may be reused.
async fn exchange(worker: &Rc<Worker>, conn: &mut Conn, plan: &Plan<'_>, mut out: Vec<u8>) -> bool {
    let upstream = plan.upstream;
    let addr = upstream.targets[plan.target];
    let mut progress = BodyProgress {
        decoder: matches!(plan.body, BodyKind::Chunked).then(ChunkedDecoder::new),
        remaining: match plan.body {
            BodyKind::Length(n) => n,
            _ => 0,
        },
        seen: 0,
        done: matches!(plan.body, BodyKind::None | BodyKind::Length(0)),
        // What came with the head counts.
        received: conn.rbuf.len() as u64,
        waited: Duration::ZERO,
    };
    if let Err(e) = take_buffered_body(conn, &mut progress, &mut out, plan.max_body) {
        return fail_before_response(worker, conn, plan, out, e).await;
    }
    // A small body is read before any upstream connection is taken (not when the client waits
    // for the origin's permission to send it).
    let head_end = out.len();
    if !progress.done && !plan.expect_continue {
        if let BodyKind::Length(n) = plan.body {
            out.reserve_exact((n as usize).min(BUFFERED_BODY));
        }
    }
    while !progress.done && !plan.expect_continue && out.len() - head_end < BUFFERED_BODY {
        match progress.read(conn, &worker.limits).await {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return fail_before_response(worker, conn, plan, out, ProxyError::RequestTimeout).await;
            }
            Err(_) => return false,
        }
        if let Err(e) = take_buffered_body(conn, &mut progress, &mut out, plan.max_body) {
            return fail_before_response(worker, conn, plan, out, e).await;
        }
    }
    // The whole request is in `out`: a failed pooled connection can be retried safely.
    let replayable = progress.done;
    plan.lb.borrow_mut().start(plan.target);
    let started = Instant::now();
    let mut attempt = 0;
    let mut ubuf = worker.spares.buf(RESPONSE_BUF);
    let (up, head_len) = loop {
        attempt += 1;
        let pooled = worker.pool.borrow_mut().take(addr, started);
        let (mut up, reused) = match pooled {
            Some(s) => (s, true),
            None => match connect(addr, upstream.connect_timeout).await {
                Ok(s) => {
                    worker.pool.borrow_mut().opened += 1;
                    (s, false)
                }
                Err(e) => {
                    attempt_failed(plan);
                    return fail_before_response(worker, conn, plan, out, e).await;
                }
            },
        };
        let retry_ok = reused && attempt == 1 && replayable;
        // A small request fits the empty send buffer of a connection between exchanges, so its
        // write cannot wait on the upstream: no timer for it.
        let (r, o) = if out.len() <= UNTIMED_WRITE {
            write_all_untimed(&mut up, out).await
        } else {
            write_all(&mut up, out, upstream.idle_timeout).await
        };
        out = o;
        if let Err(e) = r {
            if retry_ok && e.kind() != std::io::ErrorKind::TimedOut {
                continue;
            }
            attempt_failed(plan);
            return fail_before_response(worker, conn, plan, out, ProxyError::UpstreamSend).await;
        }
        ubuf.clear();
        if !progress.done && plan.expect_continue {
            // The origin's word on the expectation: a 100 lets the body go, a final answer is
            // relayed without it, silence lets it go after a short wait.
            let said = matches!(monoio::time::timeout(EXPECT_WAIT, up.readable(false)).await, Ok(Ok(())));
            if said {
                let deadline = Instant::now() + upstream.response_head_timeout;
                let mut said = read_response(&mut up, ubuf, deadline, true).await;
                if let Ok((0, b)) = said {
                    // More right behind the interim answer: a final answer made before the
                    // body was sent.
                    said = if b.is_empty() { Ok((0, b)) } else { read_response(&mut up, b, deadline, false).await };
                }
                match said {
                    Ok((0, b)) => ubuf = b,
                    Ok((head_len, b)) => {
                        // Answered before the body: the origin's connection still expects it
                        // and the client may still send it, so neither is reused.
                        attempt_answered(plan, started);
                        relay_response(worker, conn, plan, up, head_len, b, out, false).await;
                        linger(&mut conn.stream).await;
                        return false;
                    }
                    Err((e, b, nothing_received)) => {
                        ubuf = b;
                        // A pooled connection the origin had closed: nothing of the body was
                        // taken from the client yet, so a fresh connection may try again.
                        if reused && attempt == 1 && nothing_received && e != ProxyError::UpstreamTimeout {
                            continue;
                        }
                        worker.spares.give_buf(ubuf);
                        attempt_failed(plan);
                        return fail_before_response(worker, conn, plan, out, e).await;
                    }
                }
            }
            let mut cont = std::mem::take(&mut conn.out);
            cont.clear();
            cont.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let (r, b) = write_all(&mut conn.stream, cont, worker.limits.write_timeout).await;
            conn.out = b;
            if r.is_err() {
                attempt_failed(plan);
                return false;
            }
        }
        if !progress.done {
            if let Err(e) = stream_request_body(worker, conn, &mut up, &mut progress, plan, upstream.idle_timeout).await
            {
                attempt_failed(plan);
                return match e {
                    Some(e) => fail_before_response(worker, conn, plan, Vec::new(), e).await,
                    None => false,
                };
            }
        }
        let deadline = Instant::now() + upstream.response_head_timeout;
        match read_response(&mut up, ubuf, deadline, false).await {
            Ok((head_len, b)) => {
                ubuf = b;
                break (up, head_len);
            }
            Err((e, b, nothing_received)) => {
                ubuf = b;
                if retry_ok && nothing_received && plan.idempotent && e != ProxyError::UpstreamTimeout {
                    continue;
                }
                attempt_failed(plan);
                return fail_before_response(worker, conn, plan, out, e).await;
            }
        }
    };
    attempt_answered(plan, started);
    relay_response(worker, conn, plan, up, head_len, ubuf, out, true).await
}

/// Tells the balancer the plan's target answered (only the latency-aware balancer needs the time
/// to the head: a clock read).
fn attempt_answered(plan: &Plan<'_>, started: Instant) {
    if matches!(plan.upstream.lb, LbKind::P2cEwma) {
        let now = Instant::now();
        plan.lb.borrow_mut().finish(plan.target, Some(now.duration_since(started)), now.into_std());
    } else {
        plan.lb.borrow_mut().release(plan.target);
    }
}

/// Tells the balancer an attempt on the plan's target failed (a clock read only for the
/// latency-aware balancer).
fn attempt_failed(plan: &Plan<'_>) {
    if matches!(plan.upstream.lb, LbKind::P2cEwma) {
        plan.lb.borrow_mut().finish(plan.target, None, Instant::now().into_std());
    } else {
        plan.lb.borrow_mut().release(plan.target);
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(ProxyError::UpstreamConnect),
        Err(_) => Err(ProxyError::UpstreamConnectTimeout),
    }
}

/// Streams the rest of the request body from the client to the upstream. `Err(Some(e))`: answer
/// the client with `e`; `Err(None)`: the client is gone.
async fn stream_request_body(
    worker: &Worker,
    conn: &mut Conn,
    up: &mut TcpStream,
    p: &mut BodyProgress,
    plan: &Plan<'_>,
    idle: Duration,
) -> Result<(), Option<ProxyError>> {
    let mut enc = Vec::new();
    while !p.done {
        match p.read(conn, &worker.limits).await {
            Ok(0) => return Err(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Some(ProxyError::RequestTimeout)),
            Err(_) => return Err(None),
        }
        if p.decoder.is_none() {
            // Content-Length: forward straight from the receive buffer.
            let take = (conn.rbuf.len() as u64).min(p.remaining) as usize;
            let buf = std::mem::take(&mut conn.rbuf);
            let (r, buf) = write_range(up, buf, 0..take, idle).await;
            conn.rbuf = buf;
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
            conn.consume(take);
            p.remaining -= take as u64;
            p.done = p.remaining == 0;
        } else {
            enc.clear();
            take_buffered_body(conn, p, &mut enc, plan.max_body).map_err(Some)?;
            let (r, b) = write_all(up, enc, idle).await;
            enc = b;
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
        }
    }
    Ok(())
}

/// Answers the client with `e` (no response byte has been sent yet) and closes.
async fn fail_before_response(
    worker: &Worker,
    conn: &mut Conn,
    plan: &Plan<'_>,
    mut out: Vec<u8>,
    e: ProxyError,
) -> bool {
    if let Some(stale) = usable_stale(plan) {
        return serve_stale(worker, conn, out, plan, &stale).await;
    }
    out.clear();
    let extras = plan.cx.as_ref().map(|c| &c.extras);
    encode_reply(&mut out, &e.reply(), plan.request_id.as_bytes(), true, plan.is_head, None, extras);
    let (r, out) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
    conn.out = out;
    if r.is_ok() {
        linger(&mut conn.stream).await;
    }
    false
}

/// Writes the response head and streams the body to the client.
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &Plan<'_>,
    mut up: TcpStream,
    head_len: usize,
    mut ubuf: Vec<u8>,
    mut out: Vec<u8>,
    body_sent: bool,
) -> bool {
    let upstream = plan.upstream;
    let client = ClientSide {
        chain: plan.chains,
        request_id: plan.request_id.as_bytes(),
        request_was_head: plan.is_head,
        http10: plan.http10,
        te_accepts: plan.te_accepts,
        close: !plan.keep_alive || worker.draining.get() || !body_sent,
        spares: &worker.spares,
        extras: plan.cx.as_ref().map(|c| &c.extras),
    };
    out.clear();
    let resp = match encode_response(&ubuf[..head_len], &mut out, &client) {
        Ok(r) => r,
        Err(e) => return fail_before_response(worker, conn, plan, out, e).await,
    };
    if let Some(p) = plan.invalidate.as_deref().filter(|_| resp.status < 400) {
        // Here at once; on the other workers through the control thread.
        worker.cache.borrow_mut().invalidate(&plan.route.id, p);
        if let Some(tx) = &worker.invalidations {
            let inv =
                crate::worker::Invalidate { route: plan.route.id.clone(), path: p.to_string(), from: worker.ctx.id };
            let _ = tx.send(inv);
        }
    }
    if resp.status >= 500 {
        if let Some(stale) = usable_stale(plan) {
            // stale-if-error: the stored copy answers instead of the failed upstream.
            return serve_stale(worker, conn, out, plan, &stale).await;
        }
    }
    // A response the cache may keep: its body is collected while it streams, within the
    // worker's budget for captures (held until the capture ends, however it ends).
    let mut capture = match (&plan.cache, resp.body) {
        (Some(c), BodyKind::Length(n)) if c.store && n <= c.rule.max_body => {
            cacheable(&ubuf[..head_len], c).filter(|(f, _)| !c.auth || f.auth_ok).and_then(|(f, h)| {
                let held = worker.cache.borrow().reserve_capture(n)?;
                Some((Vec::with_capacity(n as usize), f, h, n, held))
            })
        }
        _ => None,
    };
    let chunked_to_client = resp.chunked_to_client(&client);
    let close_client = resp.close_client(&client);
    // Body bytes that came with the head.
    let mut decoder = matches!(resp.body, BodyKind::Chunked).then(ChunkedDecoder::new);
    let mut remaining = match resp.body {
        BodyKind::Length(n) => n,
        _ => 0,
    };
    let mut done = matches!(resp.body, BodyKind::None | BodyKind::Length(0));
    // The upstream connection holds no stray bytes.
    let mut clean = true;
    // Until the first write, a malformed body can still be answered with a 502.
    let mut head_sent = false;
    let mut start = resp.head_len;
    loop {
        if !done && decoder.is_none() && matches!(resp.body, BodyKind::Length(_)) && out.is_empty() {
            // Past the first piece a sized body goes straight from the receive buffer.
            let take = ((ubuf.len() - start) as u64).min(remaining) as usize;
            if let Some(c) = capture.as_mut() {
                c.0.extend_from_slice(&ubuf[start..start + take]);
            }
            let (r, b) = write_range(&mut conn.stream, ubuf, start..start + take, worker.limits.write_timeout).await;
            ubuf = b;
            if r.is_err() {
                return false;
            }
            head_sent = true;
            start += take;
            remaining -= take as u64;
            done = remaining == 0;
        }
        let data = &ubuf[start..];
        if !done && !data.is_empty() {
            match (&mut decoder, resp.body) {
                (Some(d), _) => {
                    let mut pos = 0;
                    loop {
                        match d.decode(data, &mut pos) {
                            Ok(Chunk::Data(r)) => {
                                if chunked_to_client {
                                    encode_chunk(&mut out, &data[r]);
                                } else {
                                    out.extend_from_slice(&data[r]);
                                }
                            }
                            Ok(Chunk::NeedMore) => break,
                            Ok(Chunk::Done) => {
                                done = true;
                                clean = pos == data.len();
                                break;
                            }
                            Err(_) if !head_sent => {
                                let e = ProxyError::UpstreamProtocol("malformed chunked response body");
                                return fail_before_response(worker, conn, plan, out, e).await;
                            }
                            Err(_) => return false,
                        }
                    }
                }
                (None, BodyKind::Length(_)) => {
                    let take = (data.len() as u64).min(remaining) as usize;
                    out.extend_from_slice(&data[..take]);
                    if let Some(c) = capture.as_mut() {
                        c.0.extend_from_slice(&data[..take]);
                    }
                    remaining -= take as u64;
                    done = remaining == 0;
                    clean = take == data.len();
                }
                _ => {
                    if chunked_to_client {
                        encode_chunk(&mut out, data);
                    } else {
                        out.extend_from_slice(data);
                    }
                }
            }
        } else if done && !data.is_empty() {
            clean = false;
        }
        if done && chunked_to_client {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            let (r, o) = worker.write_client(&mut conn.stream, out).await;
            out = o;
            if r.is_err() {
                return false;
            }
            head_sent = true;
            out.clear();
        }
        if done {
            break;
        }
        // Read more of the response body.
        ubuf.clear();
        start = 0;
        let deadline = Instant::now() + upstream.idle_timeout;
        let want = if remaining > RESPONSE_BUF as u64 { LARGE_BODY_BUF } else { RESPONSE_BUF };
        let (r, b) = read_more(&mut up, ubuf, want, deadline).await;
        ubuf = b;
        match r {
            Ok(0) if matches!(resp.body, BodyKind::UntilClose) => {
                clean = false;
                if chunked_to_client {
                    out.extend_from_slice(b"0\r\n\r\n");
                    let (r, o) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
                    out = o;
                    if r.is_err() {
                        return false;
                    }
                }
                break;
            }
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    if clean
        && body_sent
        && resp.keep_alive
        && matches!(resp.body, BodyKind::None | BodyKind::Length(_) | BodyKind::Chunked)
    {
        worker.pool.borrow_mut().put(
            upstream.targets[plan.target],
            up,
            upstream.pool_max_idle,
            upstream.pool_idle_timeout,
            Instant::now(),
        );
    }
    worker.spares.give_buf(ubuf);
    if let (Some((body, f, headers, n, _held)), Some(c)) = (capture, &plan.cache) {
        if done && body.len() as u64 == n {
            let stored = Stored {
                status: resp.status,
                headers,
                body,
                stored_ms: unix_ms(),
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
    conn.out = out;
    !close_client
}

/// Whether a response head allows storing, and for how long; with the header fields to keep.
/// A response that varies on a header field that reached the upstream but is not in the key
/// is not stored: the key could not tell its variants apart.
fn cacheable(head: &[u8], plan: &CachePlan<'_>) -> Option<(crate::cache::Freshness, crate::cache::StoredHeaders)> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    resp.parse(head).ok()?;
    for h in resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("vary")) {
        for name in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|n| !n.is_empty()) {
            let keyed = plan.rule.keyed.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(name));
            // Authorization reaches the upstream whenever a client sends it: a response made
            // without it must not answer requests with it either.
            if !keyed && (plan.sent.contains(name) || name.eq_ignore_ascii_case(b"authorization")) {
                return None;
            }
        }
    }
    let f = crate::cache::freshness(resp.code?, resp.headers, unix_ms(), plan.rule.ttl_ms)?;
    Some((f, crate::cache::stored_headers(resp.headers)))
}

/// The stored copy `stale-if-error` allows for this request now.
fn usable_stale(plan: &Plan<'_>) -> Option<Rc<Stored>> {
    let now = unix_ms();
    plan.cache.as_ref()?.stale.clone().filter(|s| s.usable_on_error(now))
}

/// Answers with a stale stored copy because the upstream failed; closes the connection.
async fn serve_stale(worker: &Worker, conn: &mut Conn, out: Vec<u8>, plan: &Plan<'_>, stale: &Stored) -> bool {
    let mut extras = plan.cx.as_ref().map(|c| c.extras).unwrap_or_default();
    extras.text = Some(("x-cache-status", "STALE"));
    let info = (plan.request_id.as_bytes(), plan.is_head, false);
    serve_stored(worker, conn, out, stale, info, plan.chains, Some(&extras)).await
}
