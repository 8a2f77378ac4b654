//! gRPC-Web (`application/grpc-web`, `-text`) from browsers, over HTTP/1.1 or HTTP/2, made a
//! gRPC call on the upstream's HTTP/2 connection: the request's messages (base64 for `-text`)
//! go up as they are framed, the answer's messages come back as they arrive, and the call's
//! trailers follow them in the body as a trailer frame (flag 0x80), its status always in it,
//! a trailers-only answer included.
//!
//! Hot path for gRPC-Web calls.

use std::rc::Rc;

use base64::Engine;
use bytes::Bytes;
use monoio::time::Instant;
use ringway_policy::{HeaderList, ResponseHead};

use super::transcode::{answer, read_body, send_all};
use super::Plan;
use crate::grpc::Kind;
use crate::record::End;
use crate::resilience::attempt::{Attempt, Failed};
use crate::respond::{Failure, Phase, ProxyError};
use crate::session::{Answer, BodyLen, Conn};
use crate::stream::Stream;
use crate::worker::Worker;

/// The gRPC-Web kind of a request whose upstream head is `out`, if it is one.
pub(super) fn kind_of(out: &[u8]) -> Option<Kind> {
    let head_end = memchr::memmem::find(out, b"\r\n\r\n")?;
    let head = &out[..head_end];
    let at = memchr::memmem::find(head, b"application/grpc-web")?;
    let line_start = head[..at].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line = &head[line_start..];
    let line = &line[..line.iter().position(|b| *b == b'\r').unwrap_or(line.len())];
    let (name, value) = line.split_at(line.iter().position(|b| *b == b':')?);
    if !name.eq_ignore_ascii_case(b"content-type") {
        return None;
    }
    Kind::of_content_type(value[1..].trim_ascii()).filter(|k| *k != Kind::Grpc)
}

pub(super) async fn run(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: Vec<u8>, kind: Kind) -> bool {
    let keep = call(worker, conn, plan, &out, kind == Kind::WebText).await;
    conn.upstream_buf = out;
    keep
}

/// The upstream head: the request's own, as `application/grpc`, its length dropped (the
/// body's framing changes with `-text`) and `te: trailers` added by the stream.
fn grpc_head(out: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(out.len());
    let end = memchr::memmem::find(out, b"\r\n\r\n").map_or(out.len(), |i| i + 2);
    for (i, line) in out[..end].split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if i > 0 {
            let name = line.split(|b| *b == b':').next().unwrap_or(b"");
            if [&b"content-type"[..], b"content-length", b"transfer-encoding", b"x-grpc-web"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                continue;
            }
        }
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"content-type: application/grpc\r\n\r\n");
    head
}

/// Base64 that may be several padded pieces one after the other (each a write of the client).
fn decode_text(body: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let mut start = 0;
    while start < clean.len() {
        // A piece ends after its padding.
        let mut end = start;
        while end < clean.len() && clean[end] != b'=' {
            end += 1;
        }
        while end < clean.len() && clean[end] == b'=' {
            end += 1;
        }
        out.extend(base64::engine::general_purpose::STANDARD.decode(&clean[start..end]).ok()?);
        start = end;
    }
    Some(out)
}

async fn call(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: &[u8], text: bool) -> bool {
    let body = match read_body(worker, conn, plan).await {
        Ok(b) => b,
        Err(None) => {
            conn.rec.cut(End::ClientAbort, "client_closed");
            return false;
        }
        Err(Some(e)) => {
            conn.rec.failed(&Failure::new(e, Phase::RequestBody));
            return answer(worker, conn, plan, e.reply()).await;
        }
    };
    conn.rec.bytes_in = body.len() as u64;
    let body = if text {
        match decode_text(&body) {
            Some(b) => b,
            None => {
                let r =
                    ringway_policy::Reply::json_error(400, "bad_request_body", "the grpc-web-text body is not base64");
                return answer(worker, conn, plan, r).await;
            }
        }
    } else {
        body
    };
    let head = grpc_head(out);
    let upstream = plan.upstream;
    let addr = upstream.targets[plan.target];
    let started = Instant::now();
    conn.rec.upstream_started = Some(started);
    conn.rec.attempts = 1;
    let attempt = Attempt::start(
        &plan.lb,
        &upstream.lb,
        plan.target,
        &upstream.health,
        &upstream.resilience,
        worker.ctx.id,
        plan.trial,
        started,
    );
    plan.trial = false;
    let sent = monoio::time::timeout_at(started + upstream.response_head_timeout, async {
        let Stream::H2(mut up) = crate::h2::client::stream(worker, addr, upstream).await? else {
            return Err(ProxyError::UpstreamProtocol("the upstream does not speak HTTP/2"));
        };
        let (response, mut send) = up.open_call(&head, body.is_empty()).await.map_err(|_| ProxyError::UpstreamSend)?;
        if !body.is_empty() {
            send_all(&mut send, Bytes::from(body)).await.map_err(|_| ProxyError::UpstreamSend)?;
        }
        let answer = response.await.map_err(|_| ProxyError::UpstreamSend)?;
        Ok((up, answer))
    })
    .await
    .unwrap_or(Err(ProxyError::UpstreamTimeout));
    let (_up, answer_head) = match sent {
        Ok(a) => a,
        Err(e) => {
            attempt.failed(if e == ProxyError::UpstreamTimeout { Failed::Timeout } else { Failed::Connect });
            conn.rec.failed(&Failure::at(e, Phase::Connect, addr, false));
            return answer(worker, conn, plan, e.reply()).await;
        }
    };
    conn.rec.connects += 1;
    conn.rec.upstream_head = Some(started.elapsed());
    conn.rec.status = answer_head.status().as_u16();
    let (parts, mut recv) = answer_head.into_parts();
    let trailers_only = recv.is_end_stream();
    // The head: the upstream's status and metadata, the client's own content type.
    let mut headers = HeaderList::with_capacity(parts.headers.len() + 2);
    let ct: &[u8] = if text { b"application/grpc-web-text+proto" } else { b"application/grpc-web+proto" };
    headers.push("content-type", ct);
    headers.push("x-request-id", plan.request_id.as_bytes().to_vec());
    for (n, v) in &parts.headers {
        let n = n.as_str();
        if n == "content-type" || n == "content-length" || (trailers_only && n.starts_with("grpc-")) {
            continue;
        }
        headers.push(n, v.as_bytes());
    }
    let mut rhead = ResponseHead::new(parts.status.as_u16(), None, conn.down.version(), headers);
    plan.chains.on_response(&mut rhead);
    let close = !(plan.keep_alive && conn.down.body_done()) || worker.draining.get();
    let extras = plan.cx.as_ref().map(|c| &c.extras);
    let close =
        conn.down.write_head(&rhead, &Answer { extras, ..Answer::new(BodyLen::Unknown, close) }).unwrap_or(true);
    let mut broke = false;
    let trailers = if trailers_only {
        Some(parts.headers.clone())
    } else {
        loop {
            match monoio::time::timeout(upstream.idle_timeout, recv.data()).await {
                Ok(Some(Ok(d))) => {
                    let _ = recv.flow_control().release_capacity(d.len());
                    conn.rec.bytes_out += d.len() as u64;
                    write(conn, &d, text);
                    if conn.down.flush(worker).await.is_err() {
                        conn.rec.unsent();
                        attempt.ended(200, started.elapsed(), false);
                        return false;
                    }
                }
                Ok(None) => break recv.trailers().await.ok().flatten(),
                Ok(Some(Err(_))) | Err(_) => {
                    broke = true;
                    break None;
                }
            }
        }
    };
    // The trailer frame: the call's status always in it.
    let mut block = Vec::with_capacity(64);
    match &trailers {
        Some(t) => {
            for (n, v) in t {
                if trailers_only && !n.as_str().starts_with("grpc-") {
                    continue;
                }
                block.extend_from_slice(n.as_str().as_bytes());
                block.extend_from_slice(b": ");
                block.extend_from_slice(v.as_bytes());
                block.extend_from_slice(b"\r\n");
            }
            if !t.contains_key("grpc-status") {
                block.extend_from_slice(b"grpc-status: 2\r\ngrpc-message: the upstream sent no status\r\n");
            }
        }
        None => block.extend_from_slice(b"grpc-status: 14\r\ngrpc-message: the upstream reset the call\r\n"),
    }
    let mut frame = Vec::with_capacity(block.len() + 5);
    crate::grpc::frame(&mut frame, &block, 0x80);
    write(conn, &frame, text);
    conn.down.end_body(None);
    attempt.ended(200, started.elapsed(), broke);
    if broke {
        conn.rec.cut(End::Error, "upstream_reset");
    }
    if conn.down.flush(worker).await.is_err() {
        conn.rec.unsent();
        return false;
    }
    if close {
        conn.down.close().await;
    }
    !close
}

fn write(conn: &mut Conn, data: &[u8], text: bool) {
    if text {
        conn.down.write_body(base64::engine::general_purpose::STANDARD.encode(data).as_bytes());
    } else {
        conn.down.write_body(data);
    }
}
