//! The plan of a request, phase by phase: parse the head, route, build the upstream's header
//! list, run the request policies, ask the cache, pick a target, write the upstream request
//! head. Each phase goes on, or leaves the request with its early answer (in [`Early`]).
//!
//! Synchronous: borrows the receive buffer and the snapshot. Hot path.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use ringway_policy::{Context, Field, HeaderList, Layered, RequestHead, RequestInfo, Verdict, Version};

use super::cached;
use super::{Early, Plan, MAX_HEADERS};
use crate::h1::head::{classify, host_without_port, BodyKind, ConnectionOptions, HeadError, Known};
use crate::h1::path::{canonical, parse_target, routing_key, Target};
use crate::h1::request;
use crate::lb::{hash64, HashOn, LbKind};
use crate::record::{method_index, End, LimitOutcome, Record, RequestId, RequestText, Trace};
use crate::resilience::state::BreakerMode;
use crate::respond::{Failure, Phase, ProxyError};
use crate::session::Conn;
use crate::snapshot::{Route, Snapshot, Upstream};
use crate::upstream;
use crate::worker::{Generation, SharedLb, Worker};

/// A phase either goes on with its result, or has filled the request's early answer.
type Step<T> = Result<T, ()>;

/// Leaves the request with `error` as its answer.
fn refuse<T>(early: &mut Early<'_>, error: ProxyError, phase: Phase) -> Step<T> {
    early.error = Some(Failure::new(error, phase));
    Err(())
}

/// Parses and checks the head, routes, runs the request policies, asks the cache, picks a
/// target and writes the upstream request head into `out`.
pub(super) fn prepare<'g>(
    worker: &Worker,
    generation: &'g Generation,
    conn: &Conn,
    // The head's length in the receive buffer, and the answer to the call a policy asked for
    // when the request was planned before.
    (head_len, answers): (usize, Option<Box<ringway_policy::Answers>>),
    out: &mut Vec<u8>,
    rec: &mut Record,
    text: &mut RequestText,
) -> Result<Plan<'g>, Box<Early<'g>>> {
    let mut early = Early::new(RequestId::generated(worker.next_request_id()));
    // The peer until the head says otherwise (trusted proxies), so a refused head is logged
    // with its sender.
    rec.client_ip = conn.peer.ip();
    let mut lower = [0u8; 256];
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let scratch = Scratch { storage: &mut storage, fields: &mut fields, lower: &mut lower };
    // The request's text is kept for the access log (and for a sampled request's spans, below).
    let keep_text = worker.log.as_ref().is_some_and(|l| l.enabled());
    let doc_trusted = &generation.snapshot.trusted_proxies;
    let Ok(mut p) = parse(worker, conn, head_len, scratch, &mut early, rec, (text, keep_text, doc_trusted)) else {
        return Err(Box::new(early));
    };
    let snapshot = &generation.snapshot;
    // A request on a TLS connection must name a host of the certificate the handshake chose:
    // another site's client-certificate rule (or none) must not answer for it.
    if let Some(t) = &conn.tls {
        if snapshot.tls.choose(Some(p.host_lc)).is_some_and(|s| *s.id != *t.certificate) {
            let _: Step<()> = refuse(&mut early, ProxyError::Misdirected, Phase::Route);
            return Err(Box::new(early));
        }
    }
    let Ok((route, path)) = select_route(snapshot, &p, &mut early) else { return Err(Box::new(early)) };
    let chains = snapshot.chains(route);
    early.route = Some(route);
    early.chains = Some(chains);
    // A WebSocket upgrade goes through only where the route allows it (elsewhere `Upgrade` is
    // dropped, as every hop-by-hop field).
    let websocket = p.websocket && route.websocket.is_some();
    let max_body = route.max_body_bytes.or(worker.limits.max_body_bytes);
    if let (BodyKind::Length(n), Some(limit)) = (p.body, max_body) {
        if n > limit {
            let _: Step<()> = refuse(&mut early, ProxyError::BodyTooLarge { limit }, Phase::Head);
            return Err(Box::new(early));
        }
    }
    let path: &str = &path;
    let own = snapshot.path_normalization(route);
    // Stored responses are filed, and invalidated, under the path as routing reads it, so a
    // POST to `/a` also drops what `/a/` and `/a;x` stored (cached routes only).
    let filed = match chains.cache() {
        Some(_) => routing_key(path, own),
        None => Cow::Borrowed(path),
    };
    // A cacheable request: only keyed headers reach the upstream (see crate::cache). A request
    // with a body is never cacheable: the body is not part of the key.
    let no_body = matches!(p.body, BodyKind::None | BodyKind::Length(0));
    let rule = chains
        .cache()
        .filter(|r| no_body && !websocket && ((p.method == "GET" && r.get) || (p.method == "HEAD" && r.head)));
    if rule.is_some() {
        // Nothing the client chose reaches the upstream of a cacheable request, its id included.
        early.request_id = RequestId::generated(worker.next_request_id());
    }
    // An unsafe method on a cached route invalidates what this worker stored for the path.
    let invalidate = (chains.cache().is_some() && !matches!(p.method, "GET" | "HEAD" | "OPTIONS" | "TRACE"))
        .then(|| filed.to_string());

    // Declared before the list, which borrows them.
    let mut traceparent = [0u8; 55];
    let request_id = early.request_id;
    let inbound_xff = p.inbound_xff.take();
    let body_here = conn.down.received_after(head_len) as u64;
    let mut list = worker.spares.headers();
    let sent = (&request_id, inbound_xff, body_here);
    let expect_continue = upstream_headers(worker, conn, &p, rule.map(|r| &**r), sent, rec, &mut list);
    if let Some(t) = &snapshot.tracing {
        if super::spans::sample(worker, rec, t.threshold) && text.parts().is_none() {
            text.set(p.method, p.host.unwrap_or(b""), p.raw_path, None);
        }
    }
    if websocket {
        list.push("connection", &b"upgrade"[..]);
        list.push("upgrade", &b"websocket"[..]);
    }
    traceparent.copy_from_slice(&rec.trace.traceparent());
    list.push("traceparent", &traceparent[..]);

    // What policies and the cache see of the request, whatever protocol carried it.
    let head = RequestHead {
        method: p.method,
        authority: p.host,
        host: p.host_lc,
        path,
        query: p.query,
        version: if p.http10 { Version::Http10 } else { Version::Http11 },
        fields: p.fields,
    };
    let info = RequestInfo {
        head: &head,
        client_ip: p.client_ip,
        route_id: &route.id,
        consumers: &snapshot.consumers,
        client_cert: conn.tls.as_ref().and_then(|t| t.client_subject.as_deref()),
    };
    let layers = (chains, &snapshot.consumers);
    let planned = request_policies(worker, layers, &info, (&mut list, answers), rec, &mut early);
    // A credential in the query stays out of the log (whatever the answer), and out of the
    // upstream request when hidden.
    let credential = match &planned {
        Ok(cx) => cx.as_ref(),
        Err(()) => early.cx.as_ref(),
    }
    .and_then(|c| c.query_credential.clone());
    let unhidden = credential.as_ref().and_then(|(name, _)| p.query.map(|q| without_param(q, name)));
    if credential.is_some() && keep_text && worker.limits.log_query {
        text.set(p.method, p.host.unwrap_or(b""), p.raw_path, unhidden.as_deref());
    }
    let Ok(mut cx) = planned else {
        return Err(Box::new(early));
    };
    let mut query = p.query;
    if credential.is_some_and(|(_, hide)| hide) {
        query = unhidden.as_deref().filter(|q| !q.is_empty());
    }
    let mut cache = None;
    if let Some(rule) = chains.cache().and(rule) {
        let found = cached::lookup(worker, rule, (route, &head, &filed), &list, cx.as_mut(), rec);
        match found {
            cached::Lookup::Hit(s) => {
                early.cached = Some(s);
                early.cx = cx;
                return Err(Box::new(early));
            }
            cached::Lookup::Go(plan) => cache = plan,
        }
    } else if chains.cache().is_some() {
        cached::bypass(cx.as_mut(), rec);
    }
    let Ok(Picked { upstream, lb, target, key, trial }) = pick(worker, snapshot, route, &p, &mut early) else {
        return Err(Box::new(early));
    };
    // The head the upstream gets: the route's path, the list the policies edited, and a Host
    // for an HTTP/1.0 request that came without one.
    if !p.host_header_sent {
        match p.host {
            Some(h) => list.push("host", h),
            None => list.push("host", upstream.targets[target].to_string().into_bytes()),
        }
    }
    let forward = RequestHead { path: route.forward_path(path), query, ..head };
    upstream::encode_request(out, &forward, &list, p.body);
    worker.spares.give_headers(list);
    Ok(Plan {
        route,
        chains,
        invalidate,
        upstream,
        lb,
        target,
        lb_key: key,
        trial,
        body: p.body,
        keep_alive: p.keep_alive,
        expect_continue,
        is_head: early.is_head,
        idempotent: matches!(p.method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
        http10: p.http10,
        te_accepts: p.te_accepts,
        max_body,
        request_id: early.request_id,
        cx,
        cache,
        websocket,
        transcode: route.transcode.as_ref().and_then(|t| snapshot.protos.get(&t.proto).map(|p| (t, &**p))),
    })
}

/// The request as the parse phase read it.
struct Parsed<'h> {
    method: &'h str,
    /// The path as sent (before it is made canonical), and the query.
    raw_path: &'h str,
    query: Option<&'h str>,
    http10: bool,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    te_accepts: u8,
    opts: ConnectionOptions<'h>,
    /// The header fields as received (`Host` replaced by an absolute-form authority).
    fields: &'h [Field<'h>],
    /// The host the request names (the absolute-form authority, else Host), port included.
    host: Option<&'h [u8]>,
    /// Whether a Host header was sent (an HTTP/1.0 request may come without one).
    host_header_sent: bool,
    /// The host without its port, lower-cased, for routing.
    host_lc: &'h str,
    client_ip: IpAddr,
    /// The inbound `X-Forwarded-For` lines joined, when the peer is a trusted proxy.
    inbound_xff: Option<Vec<u8>>,
    /// An HTTP/1.1 GET asking to switch to WebSocket.
    websocket: bool,
}

/// Room on the stack for what the parse phase reads: the codec's fields, the protocol-neutral
/// fields, the lower-cased host.
struct Scratch<'h> {
    storage: &'h mut [httparse::Header<'h>; MAX_HEADERS],
    fields: &'h mut [MaybeUninit<Field<'h>>; MAX_HEADERS],
    lower: &'h mut [u8; 256],
}

/// Phase `parse`: the head through the codec, the target, the host, the client address.
fn parse<'h>(
    worker: &Worker,
    conn: &'h Conn,
    head_len: usize,
    Scratch { storage, fields, lower }: Scratch<'h>,
    early: &mut Early<'_>,
    rec: &mut Record,
    // The request's text (kept when asked), and the document's trusted proxies.
    (text, keep_text, doc_trusted): (&mut RequestText, bool, &[ringway_policy::Network]),
) -> Step<Parsed<'h>> {
    let fail = |early: &mut Early<'_>, e: HeadError| refuse::<Parsed<'h>>(early, ProxyError::Head(e), Phase::Head);
    // The codec's own step: the head's bytes are HTTP/1 (an HTTP/2 stream hands over its head in
    // that form, so both meet the same checks).
    let req = match request::parse(&conn.down.head_bytes()[..head_len], storage, worker.limits.max_headers) {
        Ok(r) => r,
        Err(refused) => {
            early.is_head = refused.is_head;
            return fail(early, refused.error);
        }
    };
    early.is_head = req.method == "HEAD";
    early.http10 = req.http10;
    rec.http10 = req.http10;
    early.body = req.body;
    early.keep_alive = req.keep_alive;
    rec.method = method_index(req.method);
    if let Some(id) = req.request_id.and_then(RequestId::from_client) {
        early.request_id = id;
    }
    let Target { authority, path: raw_path, query } = match parse_target(req.target) {
        Ok(t) => t,
        Err(e) => return fail(early, e),
    };
    if keep_text {
        let host = authority.map(str::as_bytes).or(req.host).unwrap_or(b"");
        text.set(req.method, host, raw_path, query.filter(|_| worker.limits.log_query));
    }
    // RFC 9112 3.2.2: the authority of an absolute-form target replaces Host, for routing and
    // for the upstream.
    let host = authority.map(str::as_bytes).or(req.host);
    let mut n = 0;
    for h in req.headers.iter() {
        let value = match authority {
            Some(a) if classify(h.name) == Known::Host => a.as_bytes(),
            _ => h.value,
        };
        fields[n].write(Field { name: h.name, value });
        n += 1;
    }
    // SAFETY: the first `n` entries were just written, and a `MaybeUninit<T>` has the layout
    // of `T`.
    let headers: &'h [Field<'h>] = unsafe { std::slice::from_raw_parts(fields.as_ptr().cast::<Field<'h>>(), n) };
    let host_name = match host.map(host_without_port) {
        Some(Ok(h)) => h,
        Some(Err(e)) => return fail(early, e),
        None => "",
    };
    let host_lc = &mut lower[..host_name.len()];
    host_lc.copy_from_slice(host_name.as_bytes());
    host_lc.make_ascii_lowercase();
    // Lower-casing ASCII keeps the text valid UTF-8.
    let host_lc = std::str::from_utf8(host_lc).unwrap_or("");
    // Inbound X-Forwarded-For lines, joined in order; kept only when proxies in front are
    // trusted (otherwise the client's claim is replaced).
    let trusted_hops = if conn.trusted { worker.limits.trusted_hops } else { 0 };
    // The document's `trusted_proxies`, when the peer is one of them, say instead which hops
    // to believe.
    let by_doc = !doc_trusted.is_empty() && doc_trusted.iter().any(|n| n.contains(conn.peer.ip()));
    let mut inbound_xff: Option<Vec<u8>> = None;
    if trusted_hops > 0 || by_doc {
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
    let client_ip = match &inbound_xff {
        Some(list) if by_doc => crate::addr::client_behind(list, conn.peer.ip(), doc_trusted),
        Some(list) => crate::addr::client_address(list, conn.peer.ip(), trusted_hops),
        None => conn.peer.ip(),
    };
    rec.client_ip = client_ip;
    Ok(Parsed {
        method: req.method,
        raw_path,
        query,
        http10: req.http10,
        body: req.body,
        keep_alive: req.keep_alive,
        expect_continue: req.expect_continue,
        te_accepts: req.te_accepts,
        opts: req.connection,
        fields: headers,
        host,
        host_header_sent: req.host.is_some(),
        host_lc,
        client_ip,
        inbound_xff,
        websocket: req.upgrade_websocket,
    })
}

/// Phase `route`: the canonical path and the route it selects (with the checks that no other
/// reading of the path selects another route).
fn select_route<'g, 'h>(
    snapshot: &'g Snapshot,
    p: &Parsed<'h>,
    early: &mut Early<'g>,
) -> Step<(&'g Route, Cow<'h, str>)> {
    let fail = |early: &mut Early<'_>, e: HeadError| {
        refuse::<(&'g Route, Cow<'h, str>)>(early, ProxyError::Head(e), Phase::Route)
    };
    let find_header = |name: &str| header(p, name);
    let (host_lc, method) = (p.host_lc, p.method);
    // One canonical path for routing, policies, cache keys and forwarding (see crate::h1::path).
    let global = &snapshot.path_normalization;
    let path = match canonical(p.raw_path, global) {
        Ok(path) => path,
        Err(e) => return fail(early, e),
    };
    let Some((route, rank)) =
        snapshot.router.find_ranked(host_lc, &routing_key(&path, global), |r| r.admits(method, find_header))
    else {
        early.error = Some(Failure::new(ProxyError::NoRoute, Phase::Route));
        return Err(());
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
            let e = HeadError::Bad("an encoded '/' in the path would select another route once decoded");
            return fail(early, e);
        }
    }
    let own = snapshot.path_normalization(route);
    if own == global {
        return Ok((route, path));
    }
    // The route reads paths its own way: that reading must select the same route.
    let mine = match canonical(p.raw_path, own) {
        Ok(path) => path,
        Err(e) => return fail(early, e),
    };
    let again = snapshot.router.find(host_lc, &routing_key(&mine, own), |r| r.admits(method, find_header));
    if !again.is_some_and(|r| std::ptr::eq(&**r, route)) {
        return fail(early, HeadError::Bad("the route's path_normalization reads this path as another route's"));
    }
    Ok((route, mine))
}

/// The header list for the upstream: end-to-end fields, then the proxy's own (the policies
/// come after). Returns whether the upstream is asked for `100-continue`.
#[allow(clippy::too_many_arguments)]
fn upstream_headers<'a>(
    worker: &Worker,
    conn: &'a Conn,
    p: &Parsed<'a>,
    rule: Option<&ringway_policy::CacheRule>,
    (request_id, inbound_xff, body_here): (&'a RequestId, Option<Vec<u8>>, u64),
    rec: &mut Record,
    list: &mut HeaderList<'a>,
) -> bool {
    for h in p.fields.iter() {
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
            // `tracestate` belongs to the inbound trace: it goes on only with it (below).
            Known::Other if h.name.eq_ignore_ascii_case("tracestate") => {}
            // Identity fields are the gateway's to set: a client's never go upstream.
            Known::Other if is_identity_field(h.name) => {}
            Known::Other => {
                let keyed = rule.is_some_and(|r| r.keyed.iter().any(|k| k.eq_ignore_ascii_case(h.name)));
                // A keyed header always goes (whatever `Connection` says), so the key is what
                // the upstream saw; on a cacheable request nothing else the client sent goes
                // but Authorization (stored only when the response says it is shared).
                let send = keyed
                    || (!p.opts.lists(h.name) && (rule.is_none() || h.name.eq_ignore_ascii_case("authorization")));
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
    let expect_continue = p.expect_continue
        && !p.http10
        && match p.body {
            BodyKind::Length(n) => body_here < n,
            BodyKind::Chunked => true,
            BodyKind::None | BodyKind::UntilClose => false,
        };
    if expect_continue {
        list.push("expect", &b"100-continue"[..]);
    }
    let xff: Cow<'_, [u8]> = match inbound_xff {
        Some(mut v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.peer_ip.as_bytes());
            v.into()
        }
        None => conn.peer_ip.as_bytes().into(),
    };
    list.push("x-forwarded-for", xff);
    let scheme: &[u8] = if conn.tls.is_some() { b"https" } else { b"http" };
    list.push("x-forwarded-proto", scheme);
    if let Some(h) = p.host {
        list.push("x-forwarded-host", h);
    }
    list.push("x-request-id", request_id.as_bytes());
    if rec.trace_inbound {
        for h in p.fields.iter().filter(|h| h.name.eq_ignore_ascii_case("tracestate")) {
            list.push(h.name, h.value);
        }
    } else {
        rec.trace.trace_id[..8].copy_from_slice(&worker.random().to_be_bytes());
        rec.trace.trace_id[8..].copy_from_slice(&worker.random().to_be_bytes());
    }
    rec.trace.span_id = worker.random().to_be_bytes();
    expect_continue
}

/// Phase `request policies`: the route's chain over the global one (and the consumer's once
/// one is known), then the identity headers. `Ok(None)`: the route has no policies. `answer`:
/// the answer to the outbound call the chain asked for when the request was planned before.
fn request_policies<'a>(
    worker: &Worker,
    (chains, consumers): (Layered<'a>, &'a ringway_policy::Consumers),
    info: &RequestInfo<'_>,
    (list, answers): (&mut HeaderList<'a>, Option<Box<ringway_policy::Answers>>),
    rec: &mut Record,
    early: &mut Early<'_>,
) -> Step<Option<Context>> {
    if chains.is_empty() {
        return Ok(None);
    }
    let mut cx = Context::with_skew(worker.policy_state.clone(), worker.clock.skew_ms());
    cx.answers = answers;
    let verdict = chains.on_request(info, list, &mut cx);
    // Refused or not, the log names a caller the identity band found.
    rec.consumer = cx.identity.and_then(|i| i.consumer);
    match verdict {
        Verdict::Continue => {}
        Verdict::Respond(r) => {
            rec.end = End::Policy;
            rec.limit = match cx.answered_by {
                Some("rate_limit") => LimitOutcome::RateLimited,
                Some("concurrency_limit") => LimitOutcome::ConcurrencyLimited,
                _ => LimitOutcome::Passed,
            };
            early.reply = Some(r);
            early.cx = Some(cx);
            return Err(());
        }
        Verdict::Call(call) => {
            early.call = Some(call);
            return Err(());
        }
    }
    if let Some(id) = cx.identity {
        identity_headers(consumers, id, list);
    }
    Ok(Some(cx))
}

/// `X-Consumer-Id`, `X-Consumer-Groups` and `X-Credential-Id` (a key's fingerprint, never the
/// key) for the upstream; the client's own were never copied.
fn identity_headers<'a>(
    consumers: &'a ringway_policy::Consumers,
    id: ringway_policy::Identity,
    list: &mut HeaderList<'a>,
) {
    let Some(c) = id.consumer.and_then(|s| consumers.get(s)) else { return };
    list.push("x-consumer-id", c.id.as_bytes());
    if !c.groups_header.is_empty() {
        list.push("x-consumer-groups", c.groups_header.as_bytes());
    }
    let credential = match id.credential {
        ringway_policy::Credential::Key(i) => c.key_fingerprints.get(usize::from(i)).map(String::as_str),
        ringway_policy::Credential::Basic => c.basic.as_ref().map(|b| b.username.as_str()),
        ringway_policy::Credential::Certificate => c.subject.as_deref(),
        ringway_policy::Credential::Jwt | ringway_policy::Credential::Token => None,
    };
    if let Some(cred) = credential {
        list.push("x-credential-id", cred.as_bytes());
    }
}

/// `query` without parameter `name` (every occurrence).
fn without_param(query: &str, name: &str) -> String {
    let kept = query.split('&').filter(|p| !(p.starts_with(name) && p[name.len()..].starts_with('=')) && *p != name);
    kept.collect::<Vec<_>>().join("&")
}

/// What the pick phase chose.
pub(super) struct Picked<'g> {
    pub(super) upstream: &'g Upstream,
    pub(super) lb: SharedLb,
    pub(super) target: usize,
    /// The balancer's key (for picking again on a retry).
    pub(super) key: u64,
    /// A trial request the half-open breaker let through.
    pub(super) trial: bool,
}

/// Phase `pick`: the upstream's breaker lets the request through (or answers 503), then the
/// balancer picks among the targets in rotation.
fn pick<'g>(
    worker: &Worker,
    snapshot: &'g Snapshot,
    route: &Route,
    p: &Parsed<'_>,
    early: &mut Early<'_>,
) -> Step<Picked<'g>> {
    let upstream = snapshot.upstream(route.upstream);
    let settings = &upstream.resilience;
    let mut trial = false;
    if settings.breaker.is_some() {
        let b = &upstream.health.breaker;
        let refused = match b.mode() {
            BreakerMode::Closed => false,
            BreakerMode::Open => true,
            BreakerMode::HalfOpen => {
                trial = b.take_permit();
                !trial
            }
        };
        if refused {
            let e = ProxyError::CircuitOpen { retry_after_s: b.retry_after_s().max(1) };
            return refuse(early, e, Phase::Pick);
        }
    }
    let key = match &upstream.lb {
        LbKind::ConsistentHash(HashOn::Header(name)) => match header(p, name) {
            Some(v) => hash64(v),
            None => ip_hash(p.client_ip),
        },
        LbKind::ConsistentHash(HashOn::Ip) => ip_hash(p.client_ip),
        _ => 0,
    };
    let lb = worker.lb_state(upstream);
    let picked = pick_target(&lb, upstream, key, 0);
    if picked.is_none() && trial {
        upstream.health.breaker.give_permit();
    }
    match picked {
        Some(target) => Ok(Picked { upstream, lb, target, key, trial }),
        None if settings.checks_health() => refuse(early, ProxyError::NoHealthyTarget, Phase::Pick),
        None => refuse(early, ProxyError::NoTarget, Phase::Pick),
    }
}

/// A target for `upstream` by its balancer, among those in rotation and not in `tried` (a bit
/// per target, for retries; targets past the 64th are never excluded). When every one of
/// them is out, a `fail_open` upstream picks among all; `None`: nothing to pick.
pub(super) fn pick_target(lb: &SharedLb, upstream: &Upstream, key: u64, tried: u64) -> Option<usize> {
    let (kind, weights, ring) = (&upstream.lb, &upstream.weights, &upstream.ring);
    let health = &upstream.health;
    let not_tried = |i: usize| i >= 64 || tried & (1 << i) == 0;
    let mut lb = lb.borrow_mut();
    if !upstream.resilience.checks_health() {
        if tried == 0 {
            return lb.pick(kind, weights, ring, key);
        }
        return lb.pick_among(kind, weights, ring, key, not_tried).or_else(|| lb.pick(kind, weights, ring, key));
    }
    let usable = |i: usize| health.targets[i].usable();
    lb.pick_among(kind, weights, ring, key, |i| usable(i) && not_tried(i))
        .or_else(|| if tried != 0 { lb.pick_among(kind, weights, ring, key, usable) } else { None })
        .or_else(|| if upstream.resilience.fail_open { lb.pick(kind, weights, ring, key) } else { None })
}

/// The first value of header `name` the client sent.
fn header<'h>(p: &Parsed<'h>, name: &str) -> Option<&'h [u8]> {
    p.fields.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash64(&v4.octets()),
        IpAddr::V6(v6) => hash64(&v6.octets()),
    }
}

/// `X-Consumer-Id`, `X-Consumer-Groups`, `X-Credential-Id`: what the gateway tells upstreams
/// of an authenticated caller, so never what a client says.
#[inline]
fn is_identity_field(name: &str) -> bool {
    matches!(name.len(), 13 | 15 | 17)
        && (name.eq_ignore_ascii_case("x-consumer-id")
            || name.eq_ignore_ascii_case("x-credential-id")
            || name.eq_ignore_ascii_case("x-consumer-groups"))
}
