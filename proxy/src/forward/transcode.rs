//! An HTTP/JSON request on a transcoding route, made a gRPC call: the method its path and verb
//! resolve to, the request message from the path, the query and the JSON body (read whole,
//! within the route's body limit), one call on the upstream's HTTP/2 connection, and the answer
//! back as JSON: one object, or for a server-streaming method a JSON array or NDJSON written
//! as the messages arrive. A status other than OK answers with its HTTP status and a
//! google.rpc.Status body. Response metadata comes back as header fields.
//!
//! Hot path for transcoding routes.

use std::rc::Rc;

use bytes::Bytes;
use monoio::time::Instant;
use ringway_policy::{HeaderList, Reply, ResponseHead};

use super::Plan;
use crate::grpc::transcode::{response_json, serialize_options, status_json, Resolved, Transcode};
use crate::grpc::{code, frame, http_of_code, next_frame};
use crate::record::End;
use crate::resilience::attempt::{Attempt, Failed};
use crate::respond::{Failure, Phase, ProxyError};
use crate::session::{Answer, BodyLen, Conn, Piece};
use crate::stream::Stream;
use crate::worker::Worker;

/// Largest answer of a unary call taken in (a streaming answer goes on message by message).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Request bodies are capped at this when neither the route nor the gateway sets a limit.
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// Fields of the client's request that go on as metadata besides the route's own list: the
/// gateway's identity and tracing fields.
const PASSED: [&str; 7] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-consumer-id",
    "x-consumer-groups",
    "x-credential-id",
    "x-forwarded-for",
];

pub(super) async fn run(worker: &Rc<Worker>, conn: &mut Conn, plan: &mut Plan<'_>, out: Vec<u8>) -> bool {
    let (t, proto) = plan.transcode.expect("a transcoding plan");
    let keep = call(worker, conn, plan, t, proto, &out).await;
    conn.upstream_buf = out;
    keep
}

/// The head's request line: method and target.
fn request_line(out: &[u8]) -> (&str, &str) {
    let line = out.split(|b| *b == b'\r').next().unwrap_or(b"");
    let line = std::str::from_utf8(line).unwrap_or("");
    let mut parts = line.split(' ');
    (parts.next().unwrap_or(""), parts.next().unwrap_or("/"))
}

async fn call(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    plan: &mut Plan<'_>,
    t: &Transcode,
    proto: &crate::grpc::proto::Proto,
    out: &[u8],
) -> bool {
    let (verb, target) = request_line(out);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some(resolved) = t.resolve(proto, verb, path) else {
        let message = format!("no method of {} is bound to {verb} {path}", t.service);
        return answer(worker, conn, plan, Reply::json_error(404, "not_found", &message)).await;
    };
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
    let message = match resolved.request(query, &body, t.deny_unknown) {
        Ok(m) => m,
        Err(bad) => {
            let body = serde_json::json!({
                "error": "invalid_argument",
                "message": format!("{}{}", if bad.field.is_empty() { String::new() } else { format!("{}: ", bad.field) }, bad.message),
                "field": bad.field,
                "status": 400,
            });
            let mut r = Reply::json_error(400, "invalid_argument", "");
            r.body = serde_json::to_vec(&body).unwrap_or_default();
            return answer(worker, conn, plan, r).await;
        }
    };
    let mut framed = Vec::with_capacity(message.len() + 5);
    frame(&mut framed, &message, 0);
    let head = grpc_head(&resolved, t, out);
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
    let deadline = started + upstream.response_head_timeout;
    let sent = monoio::time::timeout_at(deadline, async {
        let Stream::H2(mut up) = crate::h2::client::stream(worker, addr, upstream).await? else {
            return Err(ProxyError::UpstreamProtocol("the upstream does not speak HTTP/2"));
        };
        let (response, mut send) = up.open_call(&head, false).await.map_err(|_| ProxyError::UpstreamSend)?;
        send_all(&mut send, Bytes::from(framed)).await.map_err(|_| ProxyError::UpstreamSend)?;
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
    let (parts, mut recv) = answer_head.into_parts();
    let mut metadata: Vec<(String, String)> = Vec::new();
    keep_metadata(&parts.headers, &mut metadata);
    if parts.status != http::StatusCode::OK {
        attempt.ended(parts.status.as_u16(), started.elapsed(), true);
        let e = ProxyError::UpstreamProtocol("the upstream answered the call with an HTTP error");
        conn.rec.failed(&Failure::at(e, Phase::ResponseHead, addr, false));
        return answer(worker, conn, plan, e.reply()).await;
    }
    let opts = serialize_options(t);
    let streaming = resolved.method.is_server_streaming();
    let binding = resolved.binding.as_deref();
    // Messages as they come: whole frames out of `buf`.
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut written = 0usize;
    let mut head_sent = false;
    let trailers_only = recv.is_end_stream();
    let trailers = if trailers_only {
        Some(parts.headers.clone())
    } else {
        loop {
            let data = monoio::time::timeout(upstream.idle_timeout, recv.data()).await;
            match data {
                Ok(Some(Ok(d))) => {
                    let _ = recv.flow_control().release_capacity(d.len());
                    buf.extend_from_slice(&d);
                    if buf.len() > MAX_ANSWER && !streaming {
                        break None;
                    }
                    while let Ok(Some((_, m))) = next_frame(&buf, &mut pos, MAX_ANSWER) {
                        match response_json(&resolved.method, binding, m, &opts) {
                            Ok(j) => messages.push(j),
                            Err(_) => break,
                        }
                    }
                    buf.drain(..pos);
                    pos = 0;
                    if streaming && !messages.is_empty() {
                        if !head_sent {
                            head_sent = true;
                            stream_head(worker, conn, plan, t, &metadata);
                        }
                        for m in messages.drain(..) {
                            stream_item(conn, t, &m, written == 0);
                            written += 1;
                        }
                        if conn.down.flush(worker).await.is_err() {
                            conn.rec.unsent();
                            attempt.ended(200, started.elapsed(), false);
                            return false;
                        }
                    }
                }
                Ok(Some(Err(_))) | Err(_) => break None,
                Ok(None) => break recv.trailers().await.ok().flatten(),
            }
        }
    };
    let Some(trailers) = trailers else {
        attempt.failed(Failed::Reset);
        let e = ProxyError::UpstreamProtocol("the call ended without its status");
        conn.rec.failed(&Failure::at(e, Phase::ResponseBody, addr, false));
        if head_sent {
            conn.rec.cut(End::Error, "upstream_reset");
            conn.down.end_body(None);
            let _ = conn.down.flush(worker).await;
            conn.down.close().await;
            return false;
        }
        return answer(worker, conn, plan, e.reply()).await;
    };
    if !trailers_only {
        keep_metadata(&trailers, &mut metadata);
    }
    let status: u32 = trailers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(code::UNKNOWN);
    attempt.ended(
        if status == code::OK { 200 } else { http_of_code(status) },
        started.elapsed(),
        status == code::UNAVAILABLE,
    );
    conn.rec.upstream_last = Some(started.elapsed());
    let failure = (status != code::OK).then(|| {
        let message =
            trailers.get("grpc-message").map(|m| crate::grpc::decode_message(m.as_bytes())).unwrap_or_default();
        let details = trailers.get("grpc-status-details-bin").map(|v| v.as_bytes());
        status_json(status, &message, details, &proto.pool)
    });
    if streaming {
        if !head_sent {
            if let Some(body) = failure {
                return answer(worker, conn, plan, json_reply(http_of_code(status), body, metadata)).await;
            }
            stream_head(worker, conn, plan, t, &metadata);
        }
        return end_stream(worker, conn, plan, t, failure, written).await;
    }
    if let Some(body) = failure {
        return answer(worker, conn, plan, json_reply(http_of_code(status), body, metadata)).await;
    }
    match messages.len() {
        1 => {
            let body = messages.pop().unwrap_or_default();
            answer(worker, conn, plan, json_reply(200, body, metadata)).await
        }
        _ => {
            let e = ProxyError::UpstreamProtocol("a unary call answered with other than one message");
            conn.rec.failed(&Failure::at(e, Phase::ResponseBody, addr, false));
            answer(worker, conn, plan, e.reply()).await
        }
    }
}

fn json_reply(status: u16, body: Vec<u8>, metadata: Vec<(String, String)>) -> Reply {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    headers.extend(metadata);
    Reply { status, headers, body }
}

/// Response metadata worth giving the client as header fields (not gRPC's own, nor framing).
fn keep_metadata(fields: &http::HeaderMap, out: &mut Vec<(String, String)>) {
    for (n, v) in fields {
        let n = n.as_str();
        if n.starts_with("grpc-") || matches!(n, "content-type" | "content-length" | "te" | "trailer") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            out.push((n.to_string(), v.to_string()));
        }
    }
}

/// The gRPC request head (in the HTTP/1.1 form the upstream stream reads): the method's path,
/// the upstream's authority, and the metadata that passes.
fn grpc_head(resolved: &Resolved, t: &Transcode, out: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(resolved.path().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut fields = [httparse::EMPTY_HEADER; crate::h1::head::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let _ = req.parse(out);
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower == "host" || PASSED.contains(&lower.as_str()) || t.metadata_headers.contains(&lower) {
            head.extend_from_slice(lower.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
    }
    head.extend_from_slice(b"content-type: application/grpc\r\n\r\n");
    head
}

pub(super) async fn send_all(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(r) => r?,
            None => return Ok(()),
        };
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, data.is_empty())?;
    }
    Ok(())
}

/// Reads the request body whole, within the route's limit. `Err(None)`: the client went away.
pub(super) async fn read_body(
    worker: &Worker,
    conn: &mut Conn,
    plan: &Plan<'_>,
) -> Result<Vec<u8>, Option<ProxyError>> {
    let cap = plan.max_body.unwrap_or(DEFAULT_MAX_BODY);
    let mut body = Vec::new();
    loop {
        conn.down
            .take_body(Some(cap), &mut |p| {
                if let Piece::Data(d) = p {
                    body.extend_from_slice(d);
                }
            })
            .map_err(Some)?;
        if conn.down.body_done() {
            return Ok(body);
        }
        match conn.down.read_body(&worker.limits).await {
            Ok(0) => return Err(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Some(ProxyError::RequestTimeout)),
            Err(_) => return Err(None),
        }
    }
}

/// Answers with a whole reply through the route's response policies.
pub(super) async fn answer(worker: &Worker, conn: &mut Conn, plan: &Plan<'_>, reply: Reply) -> bool {
    conn.rec.status = reply.status;
    conn.rec.bytes_out = if plan.is_head { 0 } else { reply.body.len() as u64 };
    let close = !(plan.keep_alive && conn.down.body_done()) || worker.draining.get();
    let extras = plan.cx.as_ref().map(|c| &c.extras);
    let close =
        conn.down.write_reply(&reply, plan.request_id.as_bytes(), close, Some(plan.chains), extras, &worker.spares);
    let r = conn.down.flush(worker).await;
    if r.is_err() {
        conn.rec.unsent();
        return false;
    }
    if close {
        conn.down.close().await;
    }
    !close
}

/// The head of a streamed answer: 200, JSON or NDJSON, the metadata, length unknown.
fn stream_head(worker: &Worker, conn: &mut Conn, plan: &Plan<'_>, t: &Transcode, metadata: &[(String, String)]) {
    conn.rec.status = 200;
    let mut headers = HeaderList::with_capacity(metadata.len() + 2);
    let ct: &[u8] = if t.ndjson { b"application/x-ndjson" } else { b"application/json" };
    headers.push("content-type", ct);
    headers.push("x-request-id", plan.request_id.as_bytes().to_vec());
    for (n, v) in metadata {
        headers.push(n.as_str(), v.as_bytes());
    }
    let mut head = ResponseHead::new(200, None, conn.down.version(), headers);
    plan.chains.on_response(&mut head);
    let extras = plan.cx.as_ref().map(|c| &c.extras);
    let close = !(plan.keep_alive && conn.down.body_done()) || worker.draining.get();
    let answer = Answer { extras, ..Answer::new(BodyLen::Unknown, close) };
    let _ = conn.down.write_head(&head, &answer);
}

fn stream_item(conn: &mut Conn, t: &Transcode, json: &[u8], first: bool) {
    let before: &[u8] = match (t.ndjson, first) {
        (true, _) => b"",
        (false, true) => b"[",
        (false, false) => b",",
    };
    conn.down.write_body(before);
    conn.down.write_body(json);
    if t.ndjson {
        conn.down.write_body(b"\n");
    }
    conn.rec.bytes_out += json.len() as u64 + 1;
}

/// Ends a streamed answer; a call that failed after its first messages ends with its status
/// as the last item (`{"error": google.rpc.Status}`).
async fn end_stream(
    worker: &Worker,
    conn: &mut Conn,
    plan: &Plan<'_>,
    t: &Transcode,
    failure: Option<Vec<u8>>,
    written: usize,
) -> bool {
    if let Some(f) = failure {
        let mut item = b"{\"error\":".to_vec();
        item.extend_from_slice(&f);
        item.push(b'}');
        stream_item(conn, t, &item, written == 0);
    } else if written == 0 && !t.ndjson {
        conn.down.write_body(b"[");
    }
    if !t.ndjson {
        conn.down.write_body(b"]");
    }
    conn.down.end_body(None);
    if conn.down.flush(worker).await.is_err() {
        conn.rec.unsent();
        return false;
    }
    let close = !(plan.keep_alive && conn.down.body_done()) || worker.draining.get();
    if close {
        conn.down.close().await;
    }
    !close
}
