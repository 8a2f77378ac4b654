//! WebSocket: an `Upgrade: websocket` request on a route that allows it goes through routing
//! and the route's policies like any other, then to the upstream on a connection of its own.
//! When the upstream answers `101 Switching Protocols`, the client hears that answer and the
//! two connections are spliced in both directions until either side closes (each direction
//! ends on its own: a half-close is passed on) or nothing moves for the idle timeout. Any
//! other answer is relayed as usual.
//!
//! The splice waits for either side to be readable (a readiness wait can be dropped without
//! losing data), reads what is there and writes it whole to the other side, over plain TCP or
//! TLS alike. Bytes are never parsed: frames, pings and closes pass as they are.

use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use super::exchange::{fail_before_response, relay_response};
use super::Plan;
use crate::client::{connect, status_of};
use crate::h1::head::{classify, Known};
use crate::io::{read_more, write_all};
use crate::record::End;
use crate::respond::{Failure, Phase, ProxyError};
use crate::session::Conn;
use crate::stream::Stream;
use crate::worker::Worker;

/// Largest response head taken from the upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes moved per read in the splice.
const CHUNK: usize = 16 * 1024;

/// Sends the upgrade request (head in `out`) and, once switched, carries the tunnel to its
/// end. Returns whether the client connection may carry another request (only when the
/// upstream refused the upgrade with an ordinary answer).
pub(super) async fn run(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: Vec<u8>) -> bool {
    let upstream = plan.upstream;
    let addr = upstream.targets[plan.target];
    if upstream.h2 {
        let e = ProxyError::UpstreamProtocol("a WebSocket upgrade needs an HTTP/1.1 upstream");
        return fail_before_response(worker, conn, plan, out, Failure::at(e, Phase::Connect, addr, false)).await;
    }
    let started = Instant::now();
    conn.rec.upstream_started = Some(started);
    conn.rec.attempts = 1;
    let mut up = match connect(addr, upstream.connect_timeout, upstream.tls.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            if e == ProxyError::UpstreamConnectTimeout {
                conn.rec.timeouts += 1;
            } else {
                conn.rec.connect_errors += 1;
            }
            return fail_before_response(worker, conn, plan, out, Failure::at(e, Phase::Connect, addr, false)).await;
        }
    };
    conn.rec.connects += 1;
    conn.rec.upstream_connect = Some(started.elapsed());
    let (r, out) = write_all(&mut up, out, upstream.idle_timeout).await;
    if r.is_err() {
        let f = Failure::at(ProxyError::UpstreamSend, Phase::Send, addr, false);
        return fail_before_response(worker, conn, plan, out, f).await;
    }
    let deadline = Instant::now() + upstream.response_head_timeout;
    let mut ubuf = worker.spares.buf(super::exchange::RESPONSE_BUF);
    ubuf.clear();
    let head_len = loop {
        if let Some(i) = memchr::memmem::find(&ubuf, b"\r\n\r\n") {
            break i + 4;
        }
        if ubuf.len() >= MAX_HEAD {
            return refused(worker, conn, plan, out, ubuf, ProxyError::UpstreamProtocol("response head too large"))
                .await;
        }
        let (r, b) = read_more(&mut up, ubuf, 8 * 1024, deadline).await;
        ubuf = b;
        match r {
            Ok(0) => {
                let e = ProxyError::UpstreamProtocol("connection closed before a complete response head");
                return refused(worker, conn, plan, out, ubuf, e).await;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                conn.rec.timeouts += 1;
                return refused(worker, conn, plan, out, ubuf, ProxyError::UpstreamTimeout).await;
            }
            Err(_) => {
                let e = ProxyError::UpstreamProtocol("connection failed before a complete response head");
                return refused(worker, conn, plan, out, ubuf, e).await;
            }
        }
    };
    conn.rec.upstream_head = Some(started.elapsed());
    let status = status_of(&ubuf[..head_len]);
    if status != 101 {
        if (100..200).contains(&status) {
            let e = ProxyError::UpstreamProtocol("an interim answer to an upgrade request");
            return refused(worker, conn, plan, out, ubuf, e).await;
        }
        // The upstream would not switch: its answer goes to the client as any other.
        conn.upstream_buf = out;
        return relay_response(worker, conn, plan, up, head_len, ubuf, false).await;
    }
    let Some(mut answer) = switching_head(&ubuf[..head_len], plan.request_id.as_bytes()) else {
        let e = ProxyError::UpstreamProtocol("a 101 answer without Upgrade: websocket");
        return refused(worker, conn, plan, out, ubuf, e).await;
    };
    conn.upstream_buf = out;
    conn.rec.status = 101;
    // What the upstream sent right behind its answer belongs to the tunnel.
    answer.extend_from_slice(&ubuf[head_len..]);
    worker.spares.give_buf(ubuf);
    let early = conn.down.take_received();
    let idle = plan.route.websocket.unwrap_or(crate::snapshot::WEBSOCKET_IDLE);
    // A tunnel's writes wait on a peer that may be slow to read, as any client write.
    let Some(client) = conn.down.stream_mut() else {
        // Only an HTTP/1.1 connection is ever upgraded.
        return false;
    };
    let (r, _) = write_all(client, answer, worker.limits.write_timeout).await;
    if r.is_err() {
        conn.rec.cut(End::ClientAbort, "client_closed");
        return false;
    }
    let (to_up, to_client, end) = splice(client, &mut up, early, idle, worker.limits.write_timeout).await;
    conn.rec.bytes_in = to_up;
    conn.rec.bytes_out = to_client;
    match end {
        Ended::Closed => {}
        Ended::Idle => conn.rec.cut(End::Timeout, "websocket_idle"),
        Ended::ClientFailed => conn.rec.cut(End::ClientAbort, "client_closed"),
        Ended::UpstreamFailed => conn.rec.cut(End::UpstreamReset, "upstream_closed"),
    }
    false
}

/// Answers the client with `e` before anything of the upstream's answer reached it.
async fn refused(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &Plan<'_>,
    out: Vec<u8>,
    ubuf: Vec<u8>,
    e: ProxyError,
) -> bool {
    worker.spares.give_buf(ubuf);
    let addr = plan.upstream.targets[plan.target];
    fail_before_response(worker, conn, plan, out, Failure::at(e, Phase::ResponseHead, addr, false)).await
}

/// The `101` the client hears: the upstream's status line and end-to-end fields (its
/// `Sec-WebSocket-*` answer among them), the upgrade, and the request id. `None` when the
/// upstream did not switch to WebSocket.
fn switching_head(head: &[u8], request_id: &[u8]) -> Option<Vec<u8>> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    if !matches!(r.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let is_ws = r
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !is_ws {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for h in r.headers.iter() {
        let keep = match classify(h.name) {
            Known::Other => !h.name.eq_ignore_ascii_case("x-request-id"),
            _ => false,
        };
        if keep {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"upgrade: websocket\r\nconnection: upgrade\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n\r\n");
    Some(out)
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Both sides closed.
    Closed,
    Idle,
    ClientFailed,
    UpstreamFailed,
}

/// One direction of a splice.
struct Way {
    buf: Vec<u8>,
    open: bool,
    moved: u64,
}

/// Moves bytes both ways until both directions are closed, one fails, or nothing moves for
/// `idle`. `early`: bytes the client sent behind its request. Returns the bytes moved to the
/// upstream and to the client.
async fn splice(
    client: &mut Stream,
    up: &mut Stream,
    early: Vec<u8>,
    idle: Duration,
    write_timeout: Duration,
) -> (u64, u64, Ended) {
    let mut c2u = Way { buf: Vec::with_capacity(CHUNK), open: true, moved: 0 };
    let mut u2c = Way { buf: Vec::with_capacity(CHUNK), open: true, moved: 0 };
    if !early.is_empty() {
        let n = early.len() as u64;
        let (r, b) = write_all(up, early, write_timeout).await;
        c2u.buf = b;
        if r.is_err() {
            return (0, 0, Ended::UpstreamFailed);
        }
        c2u.moved = n;
    }
    let end = loop {
        if !c2u.open && !u2c.open {
            break Ended::Closed;
        }
        let from_client = monoio::select! {
            r = async { if c2u.open { client.readable().await } else { std::future::pending().await } } => {
                if r.is_err() { break Ended::ClientFailed } true
            }
            r = async { if u2c.open { up.readable().await } else { std::future::pending().await } } => {
                if r.is_err() { break Ended::UpstreamFailed } false
            }
            _ = monoio::time::sleep(idle) => break Ended::Idle,
        };
        let (way, src, dst) =
            if from_client { (&mut c2u, &mut *client, &mut *up) } else { (&mut u2c, &mut *up, &mut *client) };
        let mut buf = std::mem::take(&mut way.buf);
        buf.clear();
        let (r, b) = read_more(src, buf, CHUNK, Instant::now() + idle).await;
        buf = b;
        match r {
            Ok(0) => {
                // This direction is done: the other side hears the end, the other direction
                // goes on.
                way.open = false;
                let _ = monoio::io::AsyncWriteRent::shutdown(dst).await;
                way.buf = buf;
                continue;
            }
            Ok(n) => way.moved += n as u64,
            Err(_) => break if from_client { Ended::ClientFailed } else { Ended::UpstreamFailed },
        }
        let (r, b) = write_all(dst, buf, write_timeout).await;
        way.buf = b;
        if r.is_err() {
            break if from_client { Ended::UpstreamFailed } else { Ended::ClientFailed };
        }
    };
    (c2u.moved, u2c.moved, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switching_answer_keeps_end_to_end_fields_and_names_the_upgrade() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\nKeep-Alive: 5\r\n\r\n";
        let out = String::from_utf8(switching_head(head, b"id1").unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(out.contains("Sec-WebSocket-Accept: abc=\r\n"));
        assert!(out.contains("upgrade: websocket\r\nconnection: upgrade\r\nx-request-id: id1\r\n\r\n"));
        assert!(!out.contains("Keep-Alive") && !out.contains("Upgrade: WebSocket"));
        assert!(switching_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", b"x").is_none());
    }
}
