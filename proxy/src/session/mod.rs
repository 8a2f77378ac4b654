//! The client side of a connection, whatever protocol it speaks: read a request head, read its
//! body, write the answer's head, body and trailers, finish. [`Session`] has one variant today,
//! HTTP/1 ([`h1::H1Session`]); HTTP/2 goes beside it, and the phases in [`crate::forward`] call
//! the same operations whichever it is.
//!
//! [`Conn`] is the connection: its session plus what the gateway knows of the peer and the
//! record of the request in progress. [`crate::conn`] runs it; [`crate::forward`] runs each
//! request on it.
//!
//! Hot path: one match per operation, no allocation once the buffers have grown.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use monoio::time::Instant;
use ringway_policy::{HeaderList, Layered, Reply, ResponseExtras, ResponseHead};

pub mod h1;
pub mod h2;
mod message;

pub use self::message::{Answer, Asked, BodyLen, HeadRead, Piece};
use crate::record::{Record, RequestText};
use crate::respond::ProxyError;
use crate::spares::Spares;
use crate::worker::{ServerLimits, Worker};

/// A client connection's protocol session.
// HTTP/1 is the common case and stays inline; an HTTP/2 stream is boxed.
#[allow(clippy::large_enum_variant)]
pub enum Session {
    H1(h1::H1Session),
    /// One stream of an HTTP/2 connection (`crate::h2` runs the connection).
    H2(Box<h2::H2Stream>),
}

impl Session {
    /// The protocol the client speaks (the version the gateway's own answers carry).
    pub fn version(&self) -> ringway_policy::Version {
        match self {
            Session::H1(s) => s.version(),
            Session::H2(_) => ringway_policy::Version::Http2,
        }
    }

    /// Waits for the next request head (`first`: the connection's first request).
    pub async fn read_head(&mut self, worker: &Worker, first: bool, first_byte: &mut Option<Instant>) -> HeadRead {
        match self {
            Session::H1(s) => s.read_head(worker, first, first_byte).await,
            // A stream's head arrives whole, before the stream is served.
            Session::H2(_) => HeadRead::Closed,
        }
    }

    /// Starts the request whose head (`head_len` bytes, read by [`Session::read_head`]) was
    /// accepted: the head is consumed, the body framed by `body` follows.
    pub fn begin(&mut self, head_len: usize, asked: Asked, body: crate::h1::head::BodyKind) {
        match self {
            Session::H1(s) => s.begin(head_len, asked, body),
            Session::H2(s) => s.begin(head_len, asked, body),
        }
    }

    /// For an answer given without reading the body: what the request asked of it, and the
    /// `n` bytes of it (head and whatever body is here) to drop.
    pub fn skip(&mut self, n: usize, asked: Asked) {
        match self {
            Session::H1(s) => {
                s.consume(n);
                s.asked(asked);
            }
            Session::H2(s) => s.skip(asked),
        }
    }

    /// Bytes received after the first `head_len` (the start of the body, or more requests).
    pub fn received_after(&self, head_len: usize) -> usize {
        match self {
            Session::H1(s) => s.rbuf.len().saturating_sub(head_len),
            Session::H2(s) => s.rbuf.len().saturating_sub(head_len),
        }
    }

    /// Takes the bytes received and not yet used (what the client sent behind an upgrade).
    pub fn take_received(&mut self) -> Vec<u8> {
        match self {
            Session::H1(s) => std::mem::take(&mut s.rbuf),
            Session::H2(s) => std::mem::take(&mut s.rbuf),
        }
    }

    /// The gRPC call this request is, on an HTTP/2 stream.
    pub fn grpc_call(&self) -> Option<h2::GrpcCall> {
        match self {
            Session::H2(s) => s.grpc(),
            Session::H1(_) => None,
        }
    }

    /// The HTTP/2 stream's halves, for a relay that moves both directions at once.
    pub fn h2_halves(&mut self) -> Option<h2::Halves<'_>> {
        match self {
            Session::H2(s) => Some(s.halves()),
            Session::H1(_) => None,
        }
    }

    /// The connection's stream, for a tunnel that no longer speaks HTTP (`None`: a stream of
    /// a multiplexed connection).
    pub fn stream_mut(&mut self) -> Option<&mut crate::stream::Stream> {
        match self {
            Session::H1(s) => Some(&mut s.stream),
            Session::H2(_) => None,
        }
    }

    /// The bytes of the request head (HTTP/1, or the HTTP/1.1 form of an HTTP/2 head).
    pub fn head_bytes(&self) -> &[u8] {
        match self {
            Session::H1(s) => &s.rbuf,
            Session::H2(s) => &s.rbuf,
        }
    }

    /// Gives back memory a large request or answer needed, between requests.
    pub fn between_requests(&mut self) {
        match self {
            Session::H1(s) => s.between_requests(),
            Session::H2(_) => {}
        }
    }

    /// Reads more of the request body (under the body's deadline); `Ok(0)`: the client closed.
    pub async fn read_body(&mut self, limits: &ServerLimits) -> io::Result<usize> {
        match self {
            Session::H1(s) => s.read_body(limits).await,
            Session::H2(s) => s.read_body(limits).await,
        }
    }

    /// Hands what has arrived of the request body to `sink`, decoded. Fails on malformed
    /// framing or a body over `max`.
    pub fn take_body(&mut self, max: Option<u64>, sink: &mut dyn FnMut(Piece<'_>)) -> Result<(), ProxyError> {
        match self {
            Session::H1(s) => s.take_body(max, sink),
            Session::H2(s) => s.take_body(max, sink),
        }
    }

    /// Whether the request body has been read to its end.
    pub fn body_done(&self) -> bool {
        match self {
            Session::H1(s) => s.body.done,
            Session::H2(s) => s.body_done(),
        }
    }

    /// Body bytes of the request taken so far.
    pub fn body_taken(&self) -> u64 {
        match self {
            Session::H1(s) => s.body.taken,
            Session::H2(s) => s.body_taken(),
        }
    }

    /// Lends the receive buffer when the body is sized: the buffer and how many of its first
    /// bytes are body, to be written elsewhere without a copy; `None` when the body's framing
    /// needs decoding (then [`Session::take_body`]).
    pub fn lend_body(&mut self) -> Option<(Vec<u8>, usize)> {
        match self {
            Session::H1(s) => s.lend_body(),
            Session::H2(_) => None,
        }
    }

    /// Takes back the buffer [`Session::lend_body`] lent, `used` of its body bytes gone.
    pub fn return_body(&mut self, buf: Vec<u8>, used: usize) {
        match self {
            Session::H1(s) => s.return_body(buf, used),
            // Never lent (see `lend_body`).
            Session::H2(_) => drop(buf),
        }
    }

    /// Tells the client to go on sending its body (an interim `100 Continue`).
    pub async fn write_continue(&mut self, worker: &Worker) -> io::Result<()> {
        match self {
            Session::H1(s) => s.write_continue(worker).await,
            // The body flows as the client's stream window allows: nothing to ask for.
            Session::H2(_) => Ok(()),
        }
    }

    /// Writes the answer's head (buffered until [`Session::flush`]). Returns whether the
    /// connection ends after this answer. Fails when the head cannot be given to this client
    /// (a transfer coding it did not accept).
    pub fn write_head(&mut self, head: &ResponseHead<'_>, a: &Answer<'_>) -> Result<bool, ProxyError> {
        match self {
            Session::H1(s) => s.write_head(head, a),
            Session::H2(s) => s.write_head(head, a),
        }
    }

    /// Adds body data to the answer (buffered until [`Session::flush`]).
    pub fn write_body(&mut self, data: &[u8]) {
        match self {
            Session::H1(s) => s.write_body(data),
            Session::H2(s) => s.write_body(data),
        }
    }

    /// Writes `buf[range]` as body data: straight from `buf` when nothing is buffered and the
    /// framing allows, else through the buffer (then flushed).
    pub async fn send_body(&mut self, worker: &Worker, buf: Vec<u8>, range: Range<usize>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Session::H1(s) => s.send_body(worker, buf, range).await,
            Session::H2(s) => s.send_body(worker, buf, range).await,
        }
    }

    /// Ends the answer's body, with trailer fields when there are any (buffered until
    /// [`Session::flush`]).
    pub fn end_body(&mut self, trailers: Option<&ringway_policy::HeaderList<'_>>) {
        match self {
            Session::H1(s) => s.end_body(trailers),
            Session::H2(s) => s.end_body(trailers),
        }
    }

    /// Whether answer bytes wait in the buffer.
    pub fn pending(&self) -> bool {
        match self {
            Session::H1(s) => !s.out.is_empty(),
            Session::H2(s) => s.pending(),
        }
    }

    /// Drops what is buffered and not yet written (an answer given up before its first byte
    /// left).
    pub fn discard(&mut self) {
        match self {
            Session::H1(s) => s.out.clear(),
            Session::H2(s) => s.discard(),
        }
    }

    /// Writes what is buffered (under the worker's write deadline).
    pub async fn flush(&mut self, worker: &Worker) -> io::Result<()> {
        match self {
            Session::H1(s) => s.flush(worker).await,
            Session::H2(s) => s.flush(worker).await,
        }
    }

    /// Ends the connection after a final answer without destroying it: stops sending, then
    /// drains what the client still sends for a bounded time.
    pub async fn close(&mut self) {
        match self {
            Session::H1(s) => crate::io::linger(&mut s.stream).await,
            Session::H2(s) => s.close(),
        }
    }
}

/// A client connection: its session, who the peer is, and the record of the request in
/// progress.
pub struct Conn {
    pub down: Session,
    pub peer: SocketAddr,
    /// The client address as text, made once per connection.
    pub peer_ip: String,
    /// The peer is a trusted proxy: its `X-Forwarded-For` names the client.
    pub trusted: bool,
    /// When the first byte of the next request's head arrived.
    pub first_byte: Option<Instant>,
    /// The current request's record.
    pub rec: Record,
    /// The current request's text for the access log.
    pub text: RequestText,
    /// The buffer the upstream request was built in, parked here until the request ends (then
    /// it goes back to the worker's spares).
    pub upstream_buf: Vec<u8>,
    /// The client spans of the current request's attempts, when it is sampled.
    pub spans: Vec<crate::traces::AttemptSpan>,
    /// What the current request captured, on a route that captures.
    pub captured: Option<Box<crate::capture::Captured>>,
    /// What the TLS handshake established (`None`: plaintext).
    pub tls: Option<std::rc::Rc<crate::tls::TlsInfo>>,
}

/// Whole answers: a reply of the gateway's, a stored response.
impl Session {
    /// Writes a reply the gateway produced (a policy's answer or an error), buffered, running
    /// the route's response policies when there is a route. Returns whether the connection ends
    /// after it.
    #[allow(clippy::too_many_arguments)]
    pub fn write_reply(
        &mut self,
        reply: &Reply,
        request_id: &[u8],
        close: bool,
        chain: Option<Layered<'_>>,
        extras: Option<&ResponseExtras>,
        spares: &Spares,
    ) -> bool {
        if let Session::H2(s) = self {
            if s.grpc().is_some() {
                let code = crate::grpc::code_of_http(reply.status);
                let message = crate::grpc::message_of(&reply.body);
                s.write_grpc_status(code, &message, &reply.headers, request_id);
                return false;
            }
        }
        let mut headers = spares.headers();
        for (n, v) in &reply.headers {
            headers.push(n.as_str(), v.as_bytes());
        }
        let whole = Whole { status: reply.status, body: &reply.body, age: None };
        self.write_whole(headers, whole, (request_id, close), chain, extras, spares)
    }

    /// Writes a stored response, buffered: its status and fields through the route's response
    /// policies, `Age`, the request id, the policies' fields, and the body (left out for a
    /// HEAD). Returns whether the connection ends after it.
    #[allow(clippy::too_many_arguments)]
    pub fn write_stored(
        &mut self,
        stored: &crate::cache::Stored,
        now_ms: u64,
        request_id: &[u8],
        close: bool,
        chain: Layered<'_>,
        extras: Option<&ResponseExtras>,
        spares: &Spares,
    ) -> bool {
        let mut headers = spares.headers();
        for (n, v) in &stored.headers {
            headers.push(&**n, &**v);
        }
        let whole = Whole { status: stored.status, body: &stored.body, age: Some(stored.age(now_ms)) };
        self.write_whole(headers, whole, (request_id, close), Some(chain), extras, spares)
    }

    /// What every in-memory answer does: request id, response policies, head, body.
    fn write_whole<'h>(
        &mut self,
        mut headers: HeaderList<'h>,
        w: Whole<'_>,
        (request_id, close): (&'h [u8], bool),
        chain: Option<Layered<'h>>,
        extras: Option<&ResponseExtras>,
        spares: &Spares,
    ) -> bool {
        headers.set("x-request-id", request_id);
        let mut head = ResponseHead::new(w.status, None, self.version(), headers);
        if let Some(c) = chain {
            c.on_response(&mut head);
        }
        let body = if w.status == 204 { BodyLen::None } else { BodyLen::Known(w.body.len() as u64) };
        let answer = Answer { extras, age: w.age, ..Answer::new(body, close) };
        // Only transfer codings can make a head unfit for the client, and these bodies have none.
        let close = self.write_head(&head, &answer).unwrap_or(true);
        self.write_body(w.body);
        spares.give_headers(head.headers);
        close
    }
}

/// An answer whose body is in memory.
struct Whole<'b> {
    status: u16,
    body: &'b [u8],
    /// `Age`, for stored responses.
    age: Option<u64>,
}
