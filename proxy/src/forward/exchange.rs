//! The exchange with the upstream: attempts on pooled or new connections, `Expect:
//! 100-continue`, and the response streamed back to the client.
//!
//! Hot path.

use std::rc::Rc;
use std::time::Duration;

use crate::stream::Stream;
use monoio::time::Instant;

use super::body::{stream_request_body, take_buffered_body, BUFFERED_BODY};
use super::cached::{self, serve_stale, usable_stale};
use super::plan::pick_target;
use super::spans;
use super::Plan;
use crate::client::{connect, status_of};
use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::head::{BodyKind, MAX_HEADERS};
use crate::io::{read_more, write_all, write_all_untimed};
use crate::record::End;
use crate::resilience::attempt::{Attempt, Failed};
use crate::respond::{Failure, Phase, ProxyError, Source};
use crate::session::{Answer, BodyLen, Conn};
use crate::upstream::{read_response, response_head, ResponsePlan};
use crate::worker::Worker;

/// Largest upstream request head written without a timer (well under any socket send buffer).
const UNTIMED_WRITE: usize = 8 * 1024;

/// Receive buffer for an upstream response: the head and up to 64 KiB of body in one read,
/// so a 64 KiB response is one read and one (vectored) write to the client. Measured
/// (perf/results/engine-v2/body-64k.md): with a 16 KiB first read a 64 KiB response cost 1.73x
/// nginx's CPU; with 64 KiB, 1.09x (the last bytes of the body still took a read and a write
/// of their own); with 64 KiB plus room for the head, 0.76x. Small responses cost the same. It
/// is recycled between requests (see `Spares`), so it is held only while a request waits on
/// its upstream, as nginx holds its `proxy_buffers`.
pub(super) const RESPONSE_BUF: usize = 64 * 1024 + 4 * 1024;

/// How long the origin has to answer `Expect: 100-continue` before the body is sent anyway.
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Sends the request (head already in `out`) and relays the response. Returns whether the
/// client connection may be reused.
pub(super) async fn exchange(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: Vec<u8>) -> bool {
    if plan.transcode.is_some() {
        return super::transcode::run(worker, conn, plan, out).await;
    }
    if plan.upstream.h2 {
        if let Some(call) = conn.down.grpc_call() {
            return super::grpc::pass(worker, conn, plan, out, call).await;
        }
        if let Some(kind) = super::grpc_web::kind_of(&out) {
            return super::grpc_web::run(worker, conn, plan, out, kind).await;
        }
    }
    let keep = send_and_relay(worker, conn, plan, out).await;
    conn.rec.bytes_in = conn.down.body_taken();
    keep
}

async fn send_and_relay(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, mut out: Vec<u8>) -> bool {
    let upstream = plan.upstream;
    // An HTTP/2 upstream's stream has its own flow control: the body goes without waiting for
    // permission (the `expect` field is not forwarded).
    plan.expect_continue &= !upstream.h2;
    if let Err(e) = take_buffered_body(conn, plan, &mut out) {
        return fail_before_response(worker, conn, plan, out, Failure::new(e, Phase::RequestBody)).await;
    }
    // A small body is read before any upstream connection is taken (not when the client waits
    // for the origin's permission to send it).
    let head_end = out.len();
    if !conn.down.body_done() && !plan.expect_continue {
        if let BodyKind::Length(n) = plan.body {
            out.reserve_exact((n as usize).min(BUFFERED_BODY));
        }
    }
    while !conn.down.body_done() && !plan.expect_continue && out.len() - head_end < BUFFERED_BODY {
        match conn.down.read_body(&worker.limits).await {
            Ok(0) => {
                conn.rec.cut(End::ClientAbort, "client_closed");
                return false;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let e = Failure::new(ProxyError::RequestTimeout, Phase::RequestBody);
                return fail_before_response(worker, conn, plan, out, e).await;
            }
            Err(_) => {
                conn.rec.cut(End::ClientAbort, "client_closed");
                return false;
            }
        }
        if let Err(e) = take_buffered_body(conn, plan, &mut out) {
            return fail_before_response(worker, conn, plan, out, Failure::new(e, Phase::RequestBody)).await;
        }
    }
    // The whole request is in `out`: a failed attempt can be made again safely.
    let replayable = conn.down.body_done();
    // Only when the request leaves a record to carry it.
    if let Some(rule) = plan.route.capture.as_ref().filter(|_| worker.log.as_ref().is_some_and(|l| l.enabled())) {
        // The head ends at its empty line; what follows is the body at hand.
        let head = memchr::memmem::find(&out, b"\r\n\r\n").map_or(out.len(), |i| i + 4);
        conn.captured = Some(crate::capture::Captured::request(rule, &out[..head], &out[head..]));
    }
    let started = Instant::now();
    conn.rec.upstream_started = Some(started);
    let settings = &upstream.resilience;
    let floor = settings.retries.as_ref().map_or(0.0, |r| f64::from(r.budget_min_per_sec) / worker.workers as f64);
    if let Some(r) = &settings.retries {
        plan.lb.borrow_mut().budget.deposit(r.budget_ratio);
    }
    let mut ubuf = worker.spares.buf(RESPONSE_BUF);
    let mut tried: u64 = 0;
    let mut trial = plan.trial;
    let (up, head_len, attempt) = loop {
        conn.rec.attempts += 1;
        tried |= 1u64.checked_shl(plan.target as u32).unwrap_or(0);
        // The first attempt starts with the exchange: one clock read.
        let at = if conn.rec.attempts == 1 { started } else { Instant::now() };
        if spans::sampled(conn) {
            spans::attempt_started(worker, conn, &mut out[..head_end], upstream.targets[plan.target], at);
        }
        let attempt =
            Attempt::start(&plan.lb, &upstream.lb, plan.target, &upstream.health, settings, worker.ctx.id, trial, at);
        trial = false;
        plan.trial = false;
        let (tried_it, o, b) = try_target(worker, conn, plan, out, ubuf, replayable, at).await;
        (out, ubuf) = (o, b);
        let (failure, how) = match tried_it {
            Tried::Head(up, head_len) => {
                let status = status_of(&ubuf[..head_len]);
                let retry = settings.retries.as_ref().filter(|r| r.on_status.contains(status));
                if retry.is_none() || !replayable || !plan.idempotent || !may_retry(conn, plan, floor) {
                    break (up, head_len, attempt);
                }
                // A status worth another try: this answer is dropped (and its connection).
                attempt.answered(status, at.elapsed());
                spans::attempt_ended(conn, status, None);
                drop(up);
                count_attempt(worker, conn, plan);
                if backoff(worker, conn, plan, tried).await {
                    continue;
                }
                // Nothing left in rotation: the answer is gone, so the client hears why.
                worker.spares.give_buf(ubuf);
                let e = Failure::new(ProxyError::NoHealthyTarget, Phase::Pick);
                return fail_before_response(worker, conn, plan, out, e).await;
            }
            Tried::Early(up, head_len) => {
                // Answered before the body: the origin's connection still expects it and the
                // client may still send it, so neither is reused.
                let status = status_of(&ubuf[..head_len]);
                let now = Instant::now();
                attempt.answered(status, now.duration_since(at));
                spans::attempt_ended(conn, status, None);
                conn.rec.upstream_head = Some(now.duration_since(started));
                conn.upstream_buf = out;
                relay_response(worker, conn, plan, up, head_len, ubuf, false).await;
                conn.down.close().await;
                return false;
            }
            Tried::Failed(failure, how) => (failure, how),
            Tried::Client(None) => return false,
            Tried::Client(Some(failure)) => {
                worker.spares.give_buf(ubuf);
                return fail_before_response(worker, conn, plan, out, failure).await;
            }
        };
        attempt.failed(how);
        spans::attempt_ended(conn, 0, Some(failure.error.status_and_code().1));
        let wanted = settings.retries.as_ref().is_some_and(|r| match how {
            Failed::Connect => r.on_connect_failure,
            Failed::Timeout => r.on_timeout,
            Failed::Reset => r.on_reset,
        });
        if wanted && failure.retry_safe && may_retry(conn, plan, floor) {
            count_attempt(worker, conn, plan);
            let addr = plan.upstream.targets[plan.target];
            if backoff(worker, conn, plan, tried).await {
                continue;
            }
            // Nothing left in rotation: the failure stands, at the target that failed.
            let failure = Failure { target: Some(addr), ..failure };
            worker.spares.give_buf(ubuf);
            return fail_before_response(worker, conn, plan, out, failure).await;
        }
        worker.spares.give_buf(ubuf);
        return fail_before_response(worker, conn, plan, out, failure).await;
    };
    let now = Instant::now();
    let head_at = now.duration_since(attempt.started());
    conn.rec.upstream_head = Some(now.duration_since(started));
    let status = status_of(&ubuf[..head_len]);
    conn.upstream_buf = out;
    // The attempt is settled once its answer was relayed: a body the upstream broke off counts
    // against the target, a client that went away does not.
    let keep = relay_response(worker, conn, plan, up, head_len, ubuf, true).await;
    let upstream_failed = conn.rec.error_source == Some(Source::Upstream);
    attempt.ended(status, head_at, upstream_failed);
    spans::attempt_ended(conn, status, if upstream_failed { conn.rec.error } else { None });
    keep
}

/// Counts the connections of an attempt that is tried again elsewhere against its own target
/// (the record's counts start over for the next one).
fn count_attempt(worker: &Worker, conn: &mut Conn, plan: &Plan<'_>) {
    let addr = plan.upstream.targets[plan.target];
    worker.metrics.count_target(&mut worker.series.borrow_mut(), &plan.upstream.id, addr, &conn.rec);
    let r = &mut conn.rec;
    (r.connects, r.connect_errors, r.timeouts, r.reuses) = (0, 0, 0, 0);
}

/// Whether the request may be tried again: attempts left, and the worker's budget for the
/// upstream allows a retry (a refusal is noted in the record, so in the metrics).
fn may_retry(conn: &mut Conn, plan: &Plan<'_>, floor: f64) -> bool {
    let Some(r) = &plan.upstream.resilience.retries else { return false };
    if u32::from(conn.rec.attempts) >= r.attempts {
        return false;
    }
    // A breaker that is not closed lets no retry through (a failed trial is not repeated).
    if plan.upstream.resilience.breaker.is_some()
        && plan.upstream.health.breaker.mode() != crate::resilience::state::BreakerMode::Closed
    {
        return false;
    }
    let ok = plan.lb.borrow_mut().budget.withdraw(floor, std::time::Instant::now());
    conn.rec.budget_exhausted |= !ok;
    ok
}

/// Picks the next attempt's target (another one than those tried when there is one) and waits
/// the backoff (doubled for each retry, with jitter). False: no target is in rotation.
async fn backoff(worker: &Worker, conn: &Conn, plan: &mut Plan<'_>, tried: u64) -> bool {
    match pick_target(&plan.lb, plan.upstream, plan.lb_key, tried) {
        Some(t) => plan.target = t,
        None => return false,
    }
    if let Some(r) = &plan.upstream.resilience.retries {
        let n = u32::from(conn.rec.attempts).saturating_sub(1).min(10);
        let base = r.backoff.saturating_mul(1 << n);
        // Between half and all of it, so retries of many requests do not march in step.
        let jitter = worker.random() % (base.as_micros() as u64 / 2 + 1);
        monoio::time::sleep(base / 2 + Duration::from_micros(jitter)).await;
    }
    true
}

/// Fields a trailer section may not carry on: framing, routing and connection fields.
fn forbidden_trailer(name: &str) -> bool {
    ["content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer", "upgrade"]
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// Ends the answer's body with the upstream's trailer section (`kept`: its lines as received),
/// which goes on to clients that can carry it (chunked HTTP/1.1, HTTP/2).
fn end_with_trailers(conn: &mut Conn, kept: &[u8]) {
    if kept.is_empty() {
        conn.down.end_body(None);
        return;
    }
    let mut list = ringway_policy::HeaderList::default();
    for line in kept.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else { continue };
        if name.is_empty() || !ringway_policy::is_valid_header_name(name) || forbidden_trailer(name) {
            continue;
        }
        list.push(name, line[colon + 1..].trim_ascii());
    }
    conn.down.end_body(Some(&list));
}

/// A new connection to `addr`, or for an HTTP/2 upstream a new stream of a shared one.
async fn connect_upstream(
    worker: &Rc<Worker>,
    addr: std::net::SocketAddr,
    upstream: &crate::snapshot::Upstream,
) -> Result<Stream, ProxyError> {
    if upstream.h2 {
        return crate::h2::client::stream(worker, addr, upstream).await;
    }
    connect(addr, upstream.connect_timeout, upstream.tls.as_deref()).await
}

/// How one attempt went.
enum Tried {
    /// A final response head of this length is at the start of the receive buffer.
    Head(Stream, usize),
    /// The origin gave its final answer before the body it asked to wait for.
    Early(Stream, usize),
    /// The upstream failed (with whether a retry is safe in the failure), and how.
    Failed(Failure, Failed),
    /// The client's side ended the request: it went away (`None`, recorded), or its body was
    /// refused (answer it with the failure).
    Client(Option<Failure>),
}

/// One attempt on `plan.target`: a pooled connection (tried again once on a fresh one when it
/// turns out stale and that is safe) or a new one, the request, the rest of the body, the
/// response head. Gives back the request buffer and the receive buffer.
async fn try_target(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &Plan<'_>,
    mut out: Vec<u8>,
    mut ubuf: Vec<u8>,
    replayable: bool,
    started: Instant,
) -> (Tried, Vec<u8>, Vec<u8>) {
    let upstream = plan.upstream;
    let addr = upstream.targets[plan.target];
    let mut fresh_tried = false;
    loop {
        let key = (addr, upstream.tls.as_ref().map_or(0, |t| t.id));
        let pooled = if fresh_tried || upstream.h2 { None } else { worker.pool.borrow_mut().take(key, started) };
        let (mut up, reused) = match pooled {
            Some(s) => {
                conn.rec.reuses += 1;
                (s, true)
            }
            None => match connect_upstream(worker, addr, upstream).await {
                Ok(s) => {
                    conn.rec.upstream_connect = Some(started.elapsed());
                    conn.rec.connects += 1;
                    worker.pool.borrow_mut().opened += 1;
                    (s, false)
                }
                Err(e) => {
                    let how = if e == ProxyError::UpstreamConnectTimeout {
                        conn.rec.timeouts += 1;
                        Failed::Timeout
                    } else {
                        conn.rec.connect_errors += 1;
                        Failed::Connect
                    };
                    // Nothing reached the upstream: another target may be tried.
                    return (Tried::Failed(Failure::at(e, Phase::Connect, addr, true), how), out, ubuf);
                }
            },
        };
        // A stale pooled connection is tried again once, on a fresh one, when that is safe.
        // The first pooled connection of this attempt (a stale one is replaced once).
        let first_pooled = reused && !fresh_tried;
        let again = first_pooled && replayable;
        fresh_tried |= reused;
        // A small request fits the empty send buffer of a connection between exchanges, so its
        // write cannot wait on the upstream: no timer for it.
        let (r, o) = if out.len() <= UNTIMED_WRITE {
            write_all_untimed(&mut up, out).await
        } else {
            write_all(&mut up, out, upstream.idle_timeout).await
        };
        out = o;
        if let Err(e) = r {
            if again && e.kind() != std::io::ErrorKind::TimedOut {
                continue;
            }
            let f = Failure::at(ProxyError::UpstreamSend, Phase::Send, addr, replayable && plan.idempotent);
            return (Tried::Failed(f, Failed::Reset), out, ubuf);
        }
        ubuf.clear();
        if !conn.down.body_done() && plan.expect_continue {
            // The origin's word on the expectation: a 100 lets the body go, a final answer is
            // relayed without it, silence lets it go after a short wait.
            let said = matches!(monoio::time::timeout(EXPECT_WAIT, up.readable()).await, Ok(Ok(())));
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
                    Ok((head_len, b)) => return (Tried::Early(up, head_len), out, b),
                    Err((e, b, nothing_received)) => {
                        ubuf = b;
                        // A pooled connection the origin had closed: nothing of the body was
                        // taken from the client yet, so a fresh connection may try again.
                        if first_pooled && nothing_received && e != ProxyError::UpstreamTimeout {
                            continue;
                        }
                        let how = if e == ProxyError::UpstreamTimeout {
                            conn.rec.timeouts += 1;
                            Failed::Timeout
                        } else {
                            Failed::Reset
                        };
                        // The body was not sent: safe to try again if the origin took nothing.
                        let f = Failure::at(e, Phase::ResponseHead, addr, nothing_received);
                        return (Tried::Failed(f, how), out, ubuf);
                    }
                }
            }
            if conn.down.write_continue(worker).await.is_err() {
                conn.rec.cut(End::ClientAbort, "client_write_failed");
                return (Tried::Client(None), out, ubuf);
            }
        }
        if !conn.down.body_done() {
            if let Err(e) = stream_request_body(worker, conn, &mut up, plan, upstream.idle_timeout).await {
                return match e {
                    Some(e) if e.source() == Source::Client => {
                        (Tried::Client(Some(Failure::new(e, Phase::RequestBody))), out, ubuf)
                    }
                    Some(e) => (Tried::Failed(Failure::at(e, Phase::Send, addr, false), Failed::Reset), out, ubuf),
                    None => {
                        conn.rec.cut(End::ClientAbort, "client_closed");
                        (Tried::Client(None), out, ubuf)
                    }
                };
            }
        }
        let deadline = Instant::now() + upstream.response_head_timeout;
        match read_response(&mut up, ubuf, deadline, false).await {
            Ok((head_len, b)) => return (Tried::Head(up, head_len), out, b),
            Err((e, b, nothing_received)) => {
                ubuf = b;
                if again && nothing_received && plan.idempotent && e != ProxyError::UpstreamTimeout {
                    continue;
                }
                let how = if e == ProxyError::UpstreamTimeout {
                    conn.rec.timeouts += 1;
                    Failed::Timeout
                } else {
                    Failed::Reset
                };
                // The request reached the upstream: only an idempotent one, whole in memory, may
                // go again.
                let safe = replayable && plan.idempotent;
                return (Tried::Failed(Failure::at(e, Phase::ResponseHead, addr, safe), how), out, ubuf);
            }
        }
    }
}

/// Answers the client with `e` (no response byte has been sent yet) and closes.
pub(super) async fn fail_before_response(
    worker: &Worker,
    conn: &mut Conn,
    plan: &Plan<'_>,
    out: Vec<u8>,
    e: Failure,
) -> bool {
    conn.upstream_buf = out;
    conn.down.discard();
    if let Some(stale) = usable_stale(worker, plan) {
        return serve_stale(worker, conn, plan, &stale).await;
    }
    let extras = plan.cx.as_ref().map(|c| &c.extras);
    let reply = e.error.reply();
    conn.rec.failed(&e);
    conn.rec.bytes_out = if plan.is_head { 0 } else { reply.body.len() as u64 };
    conn.down.write_reply(&reply, plan.request_id.as_bytes(), true, None, extras, &worker.spares);
    if conn.down.flush(worker).await.is_ok() {
        conn.down.close().await;
    } else {
        conn.rec.unsent();
    }
    false
}

/// How a response starts.
enum Start {
    /// Its head is written (buffered): relay the body; with whether the client connection ends
    /// after it, and the capture for the cache.
    Relay(ResponsePlan, bool, Option<cached::Capture>),
    /// `stale-if-error`: a stored copy answers instead of the failed upstream.
    Stale(Rc<crate::cache::Stored>),
    /// The head cannot go to the client.
    Fail(Failure),
}

/// Reads the upstream's response head into a `ResponseHead`, lets the cache look at it, runs
/// the response policies and has the client's session write it. Synchronous, so the parsed
/// fields never live in the exchange's future.
fn start_response(worker: &Worker, conn: &mut Conn, plan: &Plan<'_>, raw: &[u8], body_sent: bool) -> Start {
    let target = plan.upstream.targets[plan.target];
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (resp, codings, mut head) = match response_head(raw, &mut storage, plan.is_head, &worker.spares) {
        Ok(parsed) => parsed,
        Err(e) => return Start::Fail(Failure::at(e, Phase::ResponseHead, target, false)),
    };
    conn.rec.status = resp.status;
    if let Some(c) = conn.captured.as_mut() {
        c.response_head(raw);
    }
    cached::after_unsafe(worker, plan, resp.status);
    if resp.status >= 500 {
        if let Some(stale) = usable_stale(worker, plan) {
            worker.spares.give_headers(head.headers);
            return Start::Stale(stale);
        }
    }
    // A response the cache may keep (as the upstream sent it, before the policies): its body
    // is collected while it streams, within the worker's budget for captures.
    let capture = cached::Capture::begin(worker, plan, &head, resp.body);
    head.headers.set("x-request-id", plan.request_id.as_bytes());
    plan.chains.on_response(&mut head);
    let len = match resp.body {
        BodyKind::None => BodyLen::None,
        BodyKind::Length(n) => BodyLen::Known(n),
        BodyKind::Chunked | BodyKind::UntilClose => BodyLen::Unknown,
    };
    let close = !plan.keep_alive || worker.draining.get() || !body_sent;
    let answer = Answer { codings, extras: plan.cx.as_ref().map(|c| &c.extras), ..Answer::new(len, close) };
    let written = conn.down.write_head(&head, &answer);
    worker.spares.give_headers(head.headers);
    match written {
        Ok(close_client) => Start::Relay(resp, close_client, capture),
        Err(e) => Start::Fail(Failure::at(e, Phase::ResponseHead, target, false)),
    }
}

/// Starts the response (see [`start_response`]) and streams its body to the client.
pub(super) async fn relay_response(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &Plan<'_>,
    mut up: Stream,
    head_len: usize,
    mut ubuf: Vec<u8>,
    body_sent: bool,
) -> bool {
    let upstream = plan.upstream;
    let target = upstream.targets[plan.target];
    let (resp, close_client, mut capture) = match start_response(worker, conn, plan, &ubuf[..head_len], body_sent) {
        Start::Relay(resp, close_client, capture) => (resp, close_client, capture),
        Start::Stale(stale) => return serve_stale(worker, conn, plan, &stale).await,
        Start::Fail(e) => return fail_before_response(worker, conn, plan, Vec::new(), e).await,
    };
    // Body bytes that came with the head.
    let mut decoder = matches!(resp.body, BodyKind::Chunked).then(ChunkedDecoder::keep_trailers);
    let mut remaining = match resp.body {
        BodyKind::Length(n) => n,
        _ => 0,
    };
    let mut done = matches!(resp.body, BodyKind::None | BodyKind::Length(0));
    // The upstream connection holds no stray bytes.
    let mut clean = true;
    // Until the first write, a malformed body can still be answered with a 502.
    let mut head_sent = false;
    let mut start = head_len;
    loop {
        if !done && decoder.is_none() && matches!(resp.body, BodyKind::Length(_)) {
            // A sized body goes straight from the receive buffer (the session decides how:
            // beside a head still waiting, or alone).
            let take = ((ubuf.len() - start) as u64).min(remaining) as usize;
            if let Some(c) = capture.as_mut() {
                c.push(&ubuf[start..start + take]);
            }
            if let Some(c) = conn.captured.as_mut() {
                c.response_body(&ubuf[start..start + take]);
            }
            let (r, b) = conn.down.send_body(worker, ubuf, start..start + take).await;
            ubuf = b;
            if r.is_err() {
                conn.rec.cut(End::ClientAbort, "client_write_failed");
                return false;
            }
            conn.rec.bytes_out += take as u64;
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
                                conn.rec.bytes_out += r.len() as u64;
                                if let Some(c) = conn.captured.as_mut() {
                                    c.response_body(&data[r.clone()]);
                                }
                                conn.down.write_body(&data[r]);
                            }
                            Ok(Chunk::NeedMore) => break,
                            Ok(Chunk::Done) => {
                                done = true;
                                clean = pos == data.len();
                                break;
                            }
                            Err(_) if !head_sent => {
                                let e = ProxyError::UpstreamProtocol("malformed chunked response body");
                                let e = Failure::at(e, Phase::ResponseBody, target, false);
                                return fail_before_response(worker, conn, plan, Vec::new(), e).await;
                            }
                            Err(_) => {
                                conn.rec.cut(End::UpstreamReset, "bad_upstream_response");
                                return false;
                            }
                        }
                    }
                }
                // A body delimited by the close (a sized one went whole above).
                (None, _) => {
                    conn.rec.bytes_out += data.len() as u64;
                    if let Some(c) = conn.captured.as_mut() {
                        c.response_body(data);
                    }
                    conn.down.write_body(data);
                }
            }
        } else if done && !data.is_empty() {
            clean = false;
        }
        if done {
            let kept = decoder.as_mut().map(ChunkedDecoder::take_trailers).unwrap_or_default();
            end_with_trailers(conn, &kept);
        }
        if conn.down.pending() {
            if conn.down.flush(worker).await.is_err() {
                conn.rec.cut(End::ClientAbort, "client_write_failed");
                return false;
            }
            head_sent = true;
        }
        if done {
            break;
        }
        // Read more of the response body.
        ubuf.clear();
        start = 0;
        let deadline = Instant::now() + upstream.idle_timeout;
        let (r, b) = read_more(&mut up, ubuf, RESPONSE_BUF, deadline).await;
        ubuf = b;
        match r {
            Ok(0) if matches!(resp.body, BodyKind::UntilClose) => {
                clean = false;
                conn.down.end_body(None);
                if conn.down.flush(worker).await.is_err() {
                    conn.rec.cut(End::ClientAbort, "client_write_failed");
                    return false;
                }
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                conn.rec.timeouts += 1;
                conn.rec.cut(End::Timeout, "upstream_timeout");
                return false;
            }
            Ok(0) | Err(_) => {
                conn.rec.cut(End::UpstreamReset, "upstream_reset");
                return false;
            }
            Ok(_) => {}
        }
    }
    if clean
        && body_sent
        && resp.keep_alive
        && matches!(resp.body, BodyKind::None | BodyKind::Length(_) | BodyKind::Chunked)
    {
        let key = (target, upstream.tls.as_ref().map_or(0, |t| t.id));
        // A stream of a multiplexed connection is done with its request (the connection stays).
        if !upstream.h2 {
            worker.pool.borrow_mut().put(key, up, upstream.pool_max_idle, upstream.pool_idle_timeout, Instant::now());
        }
    }
    worker.spares.give_buf(ubuf);
    if let Some(c) = capture.filter(|_| done) {
        c.store(worker, plan, resp.status);
    }
    !close_client
}
