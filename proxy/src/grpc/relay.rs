//! A gRPC call relayed between an HTTP/2 client stream and an HTTP/2 upstream stream with
//! both directions moving at once, as bidirectional streaming needs (a server may answer each
//! message before the client sends the next). One future polls both halves: the client's
//! messages go up as the upstream's window allows, the answer's head, messages and trailers
//! come down as the client's window allows, and a window held shut holds back the other side's
//! reads (nothing is buffered beyond the DATA frame in hand).
//!
//! The call ends with the upstream's trailers (or a trailers-only answer), with the client's
//! reset (the upstream's stream is cancelled), or with the gateway's own status: the deadline
//! from `grpc-timeout` (DEADLINE_EXCEEDED, the upstream's stream cancelled) or an upstream that
//! reset its stream (UNAVAILABLE). Those come as trailers once the answer's head went out, as
//! a trailers-only answer before.
//!
//! Hot path: the messages move as the `Bytes` h2 received, without a copy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use monoio::time::Instant;

use super::code;
use crate::session::h2::Halves;

/// How a relayed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The upstream answered to the end: its HTTP status and `grpc-status`.
    Answered { status: u16, grpc_status: Option<u32> },
    /// The client reset its stream (or its connection went away).
    ClientGone,
    /// The upstream reset its stream or its connection failed: UNAVAILABLE went to the client.
    UpstreamBroke,
    /// The call's deadline passed: DEADLINE_EXCEEDED went to the client.
    Deadline,
}

/// What a relayed call moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// When the upstream's answer head arrived.
    pub head_at: Option<Instant>,
}

/// Relays a call whose request head went up as `up` (its answer to come from `response`).
pub async fn relay(
    down: Halves<'_>,
    up: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    deadline: Option<Instant>,
) -> (Ended, Moved) {
    let pending = Bytes::from(down.received);
    let mut pump = Pump {
        recv: down.recv,
        respond: down.respond,
        up,
        response: Some(response),
        back: None,
        down: None,
        req_ended: down.ended,
        req_done: false,
        to_up: pending,
        release_up: false,
        back_ended: false,
        to_down: Bytes::new(),
        sleep: deadline.map(|d| Box::pin(monoio::time::sleep_until(d))),
        moved: Moved::default(),
    };
    let ended = std::future::poll_fn(|cx| pump.step(cx)).await;
    (ended, pump.moved)
}

struct Pump<'s> {
    /// The client's messages.
    recv: &'s mut h2::RecvStream,
    respond: &'s mut h2::server::SendResponse<Bytes>,
    /// The client's messages go up here.
    up: h2::SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    /// The upstream's messages.
    back: Option<h2::RecvStream>,
    /// ... go down here, once the answer's head went out.
    down: Option<h2::SendStream<Bytes>>,
    /// The client ended its half (its trailers may follow).
    req_ended: bool,
    /// The request's end went up.
    req_done: bool,
    /// A DATA frame of the client's not yet all sent up.
    to_up: Bytes,
    /// Whether the client's window is opened again as `to_up` goes (not for bytes received
    /// before the relay started: those were accounted for already).
    release_up: bool,
    back_ended: bool,
    to_down: Bytes,
    sleep: Option<Pin<Box<monoio::time::Sleep>>>,
    moved: Moved,
}

impl Pump<'_> {
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                self.up.send_reset(h2::Reason::CANCEL);
                self.status(code::DEADLINE_EXCEEDED, "the call's deadline (grpc-timeout) passed at the gateway");
                return Poll::Ready(Ended::Deadline);
            }
        }
        if let Err(e) = self.request(cx) {
            return Poll::Ready(e);
        }
        if let Some(r) = self.response.as_mut() {
            match Pin::new(r).poll(cx) {
                Poll::Ready(Ok(answer)) => {
                    self.response = None;
                    self.moved.head_at = Some(Instant::now());
                    let (parts, body) = answer.into_parts();
                    let end = body.is_end_stream();
                    let status = parts.status.as_u16();
                    // A trailers-only answer carries its status in the head.
                    let grpc_status = end.then(|| status_in(&parts.headers)).flatten();
                    match self.respond.send_response(http::Response::from_parts(parts, ()), end) {
                        Ok(s) => self.down = Some(s),
                        Err(_) => {
                            self.up.send_reset(h2::Reason::CANCEL);
                            return Poll::Ready(Ended::ClientGone);
                        }
                    }
                    if end {
                        return Poll::Ready(Ended::Answered { status, grpc_status });
                    }
                    self.back = Some(body);
                }
                Poll::Ready(Err(e)) => {
                    log::debug!("gRPC upstream stream failed before its answer: {e}");
                    self.status(code::UNAVAILABLE, "the upstream reset the call");
                    return Poll::Ready(Ended::UpstreamBroke);
                }
                Poll::Pending => {}
            }
        }
        if self.back.is_some() {
            if let Poll::Ready(e) = self.answer(cx) {
                return Poll::Ready(e);
            }
        }
        let reset = match self.down.as_mut() {
            Some(d) => d.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        if reset.is_ready() {
            self.up.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(Ended::ClientGone);
        }
        Poll::Pending
    }

    /// Moves the client's messages up. `Err`: the call is over.
    fn request(&mut self, cx: &mut Context<'_>) -> Result<(), Ended> {
        while !self.req_done {
            if !self.to_up.is_empty() {
                self.up.reserve_capacity(self.to_up.len());
                match self.up.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => {
                        let chunk = self.to_up.split_to(n.min(self.to_up.len()));
                        let n = chunk.len();
                        if self.up.send_data(chunk, false).is_err() {
                            self.upstream_stopped_reading();
                            continue;
                        }
                        if self.release_up {
                            let _ = self.recv.flow_control().release_capacity(n);
                        }
                        continue;
                    }
                    Poll::Ready(Some(Ok(_))) => return Ok(()),
                    // The upstream no longer takes the request (it answered, or reset): what
                    // its answer says decides the call.
                    Poll::Ready(_) => {
                        self.upstream_stopped_reading();
                        continue;
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            if self.req_ended {
                match self.recv.poll_trailers(cx) {
                    Poll::Ready(Ok(t)) => {
                        let sent = match t {
                            Some(t) => self.up.send_trailers(t),
                            None => self.up.send_data(Bytes::new(), true),
                        };
                        if sent.is_err() {
                            self.upstream_stopped_reading();
                        }
                        self.req_done = true;
                        return Ok(());
                    }
                    Poll::Ready(Err(_)) => return Err(self.client_gone()),
                    Poll::Pending => return Ok(()),
                }
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    self.moved.bytes_in += b.len() as u64;
                    self.to_up = b;
                    self.release_up = true;
                }
                Poll::Ready(Some(Err(_))) => return Err(self.client_gone()),
                Poll::Ready(None) => self.req_ended = true,
                Poll::Pending => return Ok(()),
            }
        }
        Ok(())
    }

    fn upstream_stopped_reading(&mut self) {
        self.to_up = Bytes::new();
        self.req_done = true;
    }

    fn client_gone(&mut self) -> Ended {
        self.up.send_reset(h2::Reason::CANCEL);
        Ended::ClientGone
    }

    /// Moves the upstream's messages and trailers down.
    fn answer(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        let (Some(back), Some(down)) = (self.back.as_mut(), self.down.as_mut()) else { return Poll::Pending };
        loop {
            if !self.to_down.is_empty() {
                down.reserve_capacity(self.to_down.len());
                match down.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => {
                        let chunk = self.to_down.split_to(n.min(self.to_down.len()));
                        let n = chunk.len();
                        if down.send_data(chunk, false).is_err() {
                            self.up.send_reset(h2::Reason::CANCEL);
                            return Poll::Ready(Ended::ClientGone);
                        }
                        self.moved.bytes_out += n as u64;
                        let _ = back.flow_control().release_capacity(n);
                        continue;
                    }
                    Poll::Ready(Some(Ok(_))) | Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => {
                        self.up.send_reset(h2::Reason::CANCEL);
                        return Poll::Ready(Ended::ClientGone);
                    }
                }
            }
            if self.back_ended {
                return match back.poll_trailers(cx) {
                    Poll::Ready(Ok(t)) => {
                        let grpc_status = t.as_ref().and_then(status_in);
                        let sent = match t {
                            Some(t) => down.send_trailers(t),
                            None => down.send_data(Bytes::new(), true),
                        };
                        if sent.is_err() {
                            return Poll::Ready(Ended::ClientGone);
                        }
                        Poll::Ready(Ended::Answered { status: 200, grpc_status })
                    }
                    Poll::Ready(Err(e)) => {
                        log::debug!("gRPC upstream stream failed before its trailers: {e}");
                        self.status(code::UNAVAILABLE, "the upstream reset the call");
                        Poll::Ready(Ended::UpstreamBroke)
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            match back.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => self.to_down = b,
                Poll::Ready(Some(Err(e))) => {
                    log::debug!("gRPC upstream stream failed mid-answer: {e}");
                    self.status(code::UNAVAILABLE, "the upstream reset the call");
                    return Poll::Ready(Ended::UpstreamBroke);
                }
                Poll::Ready(None) => self.back_ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Ends the client's call with the gateway's status: in trailers once the answer's head
    /// went out, else as a trailers-only answer.
    fn status(&mut self, code: u32, message: &'static str) {
        let mut fields = HeaderMap::new();
        fields.insert("grpc-status", HeaderValue::from(code));
        fields.insert("grpc-message", HeaderValue::from_static(message));
        match self.down.as_mut() {
            Some(d) => {
                let _ = d.send_trailers(fields);
            }
            None => {
                let mut head = http::Response::new(());
                *head.headers_mut() = fields;
                head.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                let _ = self.respond.send_response(head, true);
            }
        }
    }
}

fn status_in(fields: &HeaderMap) -> Option<u32> {
    fields.get("grpc-status").and_then(|v| std::str::from_utf8(v.as_bytes()).ok()).and_then(|v| v.parse().ok())
}
