//! HTTP/2 from clients: negotiated by ALPN on the TLS listener, or with prior knowledge (the
//! connection preface) on the plaintext one. hyperium's `h2` speaks the protocol; each stream
//! it accepts runs in a task of its own through the same pipeline as an HTTP/1.1 request
//! ([`crate::forward::handle`] over a [`crate::session::h2::H2Stream`]).
//!
//! The connection task moves bytes between the socket and h2 ([`io`]), reads every frame
//! header as it arrives to stop floods h2 would answer for ever ([`guard`]), and closes a
//! connection that stays idle. h2 itself bounds concurrent streams, header lists, streams the
//! client resets before they are accepted (rapid reset) and streams it makes the server reset
//! (MadeYouReset); each of these ends the offender's connection with GOAWAY.
//!
//! Hot path: no lock (the pipe's buffers are shared within the worker's thread).

pub mod client;
mod guard;
mod io;
pub mod up;

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::AsyncReadRent;
use monoio::time::Instant;

use self::guard::Guard;
pub use self::guard::PREFACE;
use self::io::{Pipe, PipeIo};
use crate::record::{Record, RequestText};
use crate::session::h2::H2Stream;
use crate::session::{Conn, Session};
use crate::stream::Stream;
use crate::worker::Worker;

/// Streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 128;
/// Streams a client may reset before the server has accepted them (rapid reset).
const MAX_PENDING_RESETS: usize = 20;
/// Streams a client may make the server reset with errors (MadeYouReset).
const MAX_ERROR_RESETS: usize = 128;

type Handshaking = std::pin::Pin<Box<h2::server::Handshake<PipeIo, Bytes>>>;

enum State {
    Handshake(Handshaking),
    Serving(Box<h2::server::Connection<PipeIo, Bytes>>),
}

/// What woke the connection task (a value on the stack, never stored).
#[allow(clippy::large_enum_variant)]
enum Event {
    /// h2 has bytes to send.
    Send,
    Ready(Box<h2::server::Connection<PipeIo, Bytes>>),
    Stream(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>),
    /// The connection ended (cleanly or not).
    Done,
    Readable(bool),
    Tick,
}

/// Serves an HTTP/2 connection to its end; `received`: bytes already read from it (the
/// preface, on the plaintext listener).
pub async fn serve(
    worker: &Rc<Worker>,
    mut stream: Stream,
    (peer, trusted): (SocketAddr, bool),
    tls: Option<Rc<crate::tls::TlsInfo>>,
    received: Vec<u8>,
) {
    let pipe = Rc::new(RefCell::new(Pipe::default()));
    let mut guard = Guard::new(std::time::Instant::now());
    let mut refused = None;
    if !received.is_empty() {
        refused = guard.scan(&received, std::time::Instant::now());
        pipe.borrow_mut().received(&received);
    }
    let limits = &worker.limits;
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(limits.max_head_bytes as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .initial_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buffer_size(256 * 1024);
    let mut state = State::Handshake(Box::pin(builder.handshake(PipeIo(pipe.clone()))));
    let open = Rc::new(Cell::new(0usize));
    // A stream that found the client misbehaving (a window kept shut) names it here.
    let offense: Rc<Cell<Option<&'static str>>> = Rc::default();
    let mut out = Vec::new();
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut eof = false;
    let mut last_active = Instant::now();
    let handshake_by = last_active + limits.head_timeout;
    let mut closing = false;
    let mut close_by: Option<Instant> = None;
    loop {
        // What h2 wrote goes out first.
        pipe.borrow_mut().take_outbound(&mut out);
        if !out.is_empty() {
            let (r, mut b) = worker.write_client(&mut stream, std::mem::take(&mut out)).await;
            b.clear();
            out = b;
            if r.is_err() {
                break;
            }
        }
        if let Some(reason) = offense.take() {
            refused.get_or_insert(reason);
        }
        if let (Some(reason), State::Serving(c)) = (refused, &mut state) {
            refused = None;
            log::debug!("worker {}: HTTP/2 from {peer} closed: {reason}", worker.ctx.id);
            worker.metrics.gauges.h2_floods.add(1);
            c.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            closing = true;
            close_by.get_or_insert(Instant::now() + Duration::from_secs(1));
        }
        let event = monoio::select! {
            e = std::future::poll_fn(|cx| poll_h2(&mut state, &pipe, cx)) => e,
            r = async { if eof { std::future::pending().await } else { stream.readable().await } } => Event::Readable(r.is_ok()),
            _ = monoio::time::sleep(Duration::from_secs(1)) => Event::Tick,
        };
        match event {
            Event::Send => {}
            Event::Ready(c) => state = State::Serving(c),
            Event::Stream(req, mut respond) => {
                last_active = Instant::now();
                if closing {
                    continue;
                }
                // Streams the client reset stop counting for h2 while their requests go on:
                // the tasks themselves are capped, so resets cannot pile work up.
                if open.get() >= MAX_STREAMS as usize {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                open.set(open.get() + 1);
                let (w, open, tls, offense) = (worker.clone(), open.clone(), tls.clone(), offense.clone());
                monoio::spawn(async move {
                    let served = serve_stream(&w, req, respond, (peer, trusted), tls, offense);
                    if crate::task::CatchPanic(served).await.is_err() {
                        log::error!("worker {}: an HTTP/2 stream task panicked; its stream was reset", w.ctx.id);
                    }
                    open.set(open.get() - 1);
                });
            }
            Event::Done => break,
            Event::Readable(ok) => {
                let (r, b) = stream.read(std::mem::take(&mut rbuf)).await;
                rbuf = b;
                match r {
                    Ok(n) if n > 0 && ok => {
                        last_active = Instant::now();
                        let now = std::time::Instant::now();
                        if refused.is_none() && !closing {
                            refused = guard.scan(&rbuf[..n], now);
                        }
                        pipe.borrow_mut().received(&rbuf[..n]);
                    }
                    _ => {
                        eof = true;
                        pipe.borrow_mut().closed();
                    }
                }
                rbuf.clear();
            }
            Event::Tick => {
                let now = Instant::now();
                let State::Serving(c) = &mut state else {
                    if now >= handshake_by {
                        break;
                    }
                    continue;
                };
                let idle = open.get() == 0 && now.duration_since(last_active) >= limits.keepalive_timeout;
                if !closing && (idle || worker.draining.get()) {
                    c.graceful_shutdown();
                    closing = true;
                    close_by = Some(now + limits.head_timeout);
                }
                if close_by.is_some_and(|d| now >= d) {
                    break;
                }
            }
        }
    }
    // The last of what h2 wrote (a GOAWAY) goes out; then the connection ends without
    // destroying it (the client's unread bytes would make the kernel reset it).
    pipe.borrow_mut().take_outbound(&mut out);
    if !out.is_empty() {
        let _ = worker.write_client(&mut stream, out).await;
    }
    drop(state);
    crate::io::linger(&mut stream).await;
    // Streams still running end with the connection: their reads and writes to the client fail
    // now, and what waits on an upstream ends within its timeouts. The connection holds its
    // place (and its client's share of the connection caps) until they have.
    while open.get() > 0 {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls h2 for what the connection task must do next.
fn poll_h2(state: &mut State, pipe: &Rc<RefCell<Pipe>>, cx: &mut std::task::Context<'_>) -> Poll<Event> {
    let polled = match state {
        State::Handshake(h) => match h.as_mut().poll(cx) {
            Poll::Ready(Ok(c)) => Poll::Ready(Event::Ready(Box::new(c))),
            Poll::Ready(Err(_)) => Poll::Ready(Event::Done),
            Poll::Pending => Poll::Pending,
        },
        State::Serving(c) => match c.poll_accept(cx) {
            Poll::Ready(Some(Ok((req, respond)))) => Poll::Ready(Event::Stream(req, respond)),
            Poll::Ready(Some(Err(_)) | None) => Poll::Ready(Event::Done),
            Poll::Pending => Poll::Pending,
        },
    };
    if polled.is_ready() {
        return polled;
    }
    let mut p = pipe.borrow_mut();
    if !p.outbound.is_empty() {
        return Poll::Ready(Event::Send);
    }
    p.sender = Some(cx.waker().clone());
    Poll::Pending
}

/// One stream: its request through the pipeline, its answer back.
async fn serve_stream(
    worker: &Rc<Worker>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    (peer, trusted): (SocketAddr, bool),
    tls: Option<Rc<crate::tls::TlsInfo>>,
    offense: Rc<Cell<Option<&'static str>>>,
) {
    let (parts, body) = req.into_parts();
    let (session, head_len) = H2Stream::new(&parts, body, respond, offense);
    let now = Instant::now();
    let mut conn = Conn {
        down: Session::H2(Box::new(session)),
        peer,
        peer_ip: peer.ip().to_string(),
        trusted,
        first_byte: Some(now),
        rec: Record::new(now),
        text: RequestText::default(),
        upstream_buf: Vec::new(),
        spans: Vec::new(),
        captured: None,
        tls,
    };
    crate::forward::handle(worker, &mut conn, head_len).await;
}
