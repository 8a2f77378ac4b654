//! What stands between an admin connection's socket and hyper: the checks hyper cannot make
//! because it never shows its caller the raw bytes, and the clocks of a request.
//!
//! The gate buffers each request head until it is whole and hands it to hyper only once the
//! data plane's strict checks passed: no bare LF or CR, no NUL, no `_` in names, exactly one
//! well-formed `Content-Length` or none, no `Transfer-Encoding`, a path as the target, and
//! nothing hyper would refuse with an answer of its own (which would carry no JSON body).
//! Then it hands on exactly the body the head announced, and waits for the next head. hyper
//! therefore only ever sees well-framed requests; everything the gate refuses is answered by
//! the server once hyper is done (`refusal`), with `Connection: close`.
//!
//! Clocks: an idle connection is closed after `idle_timeout`; a request head must be whole
//! within `request_timeout` of its first byte (408); the body's share of that deadline is
//! kept by the request handler ([`ConnInfo::deadline`]); a write that makes no progress for
//! `write_timeout` fails. The first byte of a request takes a slot ([`Slots::begin`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use ringway_proxy::h1::head::{
    check_partial_head, check_raw_head, classify, parse_content_length, ConnectionOptions, HeadError, Known,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::http::{head_error, raw_response, AdminLimits, Response};
use crate::slots::{Refusal, Slots};

/// Largest request head.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a request head.
pub(crate) const MAX_HEADERS: usize = 64;
/// How long closing after a refusal reads what the client still sends, at most.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// What a connection's gate and its request handler share.
pub(crate) struct ConnInfo {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) slots: Arc<Slots>,
    /// When the current request's head and body must have arrived.
    deadline: Mutex<Instant>,
}

impl ConnInfo {
    pub(crate) fn new(id: u64, peer: SocketAddr, slots: Arc<Slots>) -> ConnInfo {
        ConnInfo { id, peer, slots, deadline: Mutex::new(Instant::now()) }
    }

    /// When the request being read must be whole.
    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_deadline(&self, at: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: no byte of the next one yet.
    Idle,
    /// Reading a head, not yet handed on, that must be whole by `deadline`; `checked` bytes of
    /// the buffer were already scanned.
    Head { deadline: Instant, checked: usize },
    /// Handing on a checked head's `head` bytes, then `body` bytes of its body.
    Pass { head: usize, body: u64 },
    /// Refused, or the client left: hyper reads the end of the stream.
    Done,
}

/// A socket as hyper reads and writes it; see the module's description.
pub(crate) struct Gate {
    io: TcpStream,
    /// Bytes read from the socket and not yet handed on.
    buf: Vec<u8>,
    state: State,
    conn: Arc<ConnInfo>,
    request_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// The answer the server writes once hyper is done, when the gate refused a request.
    refusal: Option<Response>,
}

impl Gate {
    pub(crate) fn new(io: TcpStream, conn: Arc<ConnInfo>, limits: &AdminLimits) -> Gate {
        Gate {
            io,
            buf: Vec::new(),
            state: State::Idle,
            conn,
            request_timeout: limits.request_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            read_timer: None,
            write_timer: None,
            refusal: None,
        }
    }

    fn refuse(&mut self, r: Response) {
        self.refusal = Some(r);
        self.state = State::Done;
        self.read_timer = None;
    }

    /// Reads what the socket has into the buffer; 0 at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut tmp = [0u8; 16 * 1024];
        let mut rb = ReadBuf::new(&mut tmp);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        self.buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    }

    /// Whether the read timer (armed for `until` when not yet) has fired.
    fn timer_fired(&mut self, cx: &mut Context<'_>, until: Instant) -> bool {
        let t = self.read_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
        t.as_mut().poll(cx).is_ready()
    }

    /// After hyper is done with the connection: writes the gate's refusal, if any, then
    /// closes without resetting the connection. Unread request bytes at close would make the
    /// kernel send a reset, which can destroy the answer before the client reads it, so what
    /// the client still sends is read and dropped: up to 256 KiB, for at most a second in all
    /// (200 ms without a byte ends it sooner), so a client that trickles cannot hold on.
    pub(crate) async fn finish(mut self) {
        if let Some(r) = self.refusal.take() {
            let bytes = raw_response(&r);
            let write = tokio::time::timeout(self.write_timeout, self.io.write_all(&bytes));
            if !matches!(write.await, Ok(Ok(()))) {
                return;
            }
        }
        let _ = self.io.shutdown().await;
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut tmp = [0u8; 16 * 1024];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
            if wait.is_zero() {
                break;
            }
            match tokio::time::timeout(wait, self.io.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }

    fn timed<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.write_timer = None;
            return r;
        }
        let wait = self.write_timeout;
        let t = self.write_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client does not take its answer")));
        }
        Poll::Pending
    }
}

impl AsyncRead for Gate {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.state {
                State::Done => return Poll::Ready(Ok(())),
                State::Pass { head, body } => {
                    let allowed = head.saturating_add(usize::try_from(body).unwrap_or(usize::MAX));
                    if allowed == 0 {
                        this.state = State::Idle;
                        continue;
                    }
                    if this.buf.is_empty() {
                        // Only body bytes can be missing: heads are buffered whole.
                        if ready!(this.fill(cx))? == 0 {
                            this.state = State::Done;
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    let n = this.buf.len().min(allowed).min(out.remaining());
                    out.put_slice(&this.buf[..n]);
                    this.buf.drain(..n);
                    let from_head = n.min(head);
                    this.state = State::Pass { head: head - from_head, body: body - (n - from_head) as u64 };
                    return Poll::Ready(Ok(()));
                }
                State::Idle => {
                    if this.buf.is_empty() {
                        let until = Instant::now() + this.idle_timeout;
                        match this.fill(cx) {
                            Poll::Ready(Ok(0)) => {
                                this.state = State::Done;
                                continue;
                            }
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {
                                if this.timer_fired(cx, until) {
                                    this.state = State::Done;
                                    continue;
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    this.read_timer = None;
                    match this.conn.slots.begin(this.conn.id) {
                        Ok(()) => {}
                        Err(Refusal::Closed) => {
                            this.state = State::Done;
                            continue;
                        }
                        Err(Refusal::Busy(m)) => {
                            this.refuse(Response::error(503, "admin_busy", m));
                            continue;
                        }
                    }
                    let deadline = Instant::now() + this.request_timeout;
                    this.conn.set_deadline(deadline);
                    this.state = State::Head { deadline, checked: 0 };
                }
                State::Head { deadline, checked } => {
                    if let Some(end) = head_end(&this.buf, checked) {
                        match frame(&this.buf[..end]) {
                            Ok(body) => {
                                this.state = State::Pass { head: end, body };
                                this.read_timer = None;
                            }
                            Err(r) => this.refuse(r),
                        }
                        continue;
                    }
                    // A CR just before the new bytes may pair with an LF among them.
                    let from = if checked > 0 && this.buf[checked - 1] == b'\r' { checked - 1 } else { checked };
                    if let Err(e) = check_partial_head(&this.buf[from..]) {
                        this.refuse(head_error(e));
                        continue;
                    }
                    if this.buf.len() > MAX_HEAD {
                        this.refuse(head_error(HeadError::TooLarge));
                        continue;
                    }
                    this.state = State::Head { deadline, checked: this.buf.len() };
                    match this.fill(cx) {
                        // The client left in the middle of a head: nobody to answer.
                        Poll::Ready(Ok(0)) => this.state = State::Done,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if !this.timer_fired(cx, deadline) {
                                return Poll::Pending;
                            }
                            let timeout = this.request_timeout;
                            this.refuse(Response::error(
                                408,
                                "request_timeout",
                                format!("the request head and body must arrive within {timeout:?} of its first byte"),
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.timed(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.timed(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Where the head at the start of `buf` ends (just past its empty line), looking from about
/// `checked`: at the first `\n\n` or `\n\r\n`, so that a head with bare LFs is found whole and
/// refused, not waited on.
fn head_end(buf: &[u8], checked: usize) -> Option<usize> {
    let from = checked.saturating_sub(2);
    let rest = &buf[from..];
    for (i, w) in rest.windows(2).enumerate() {
        if w[0] != b'\n' {
            continue;
        }
        if w[1] == b'\n' {
            return Some(from + i + 2);
        }
        if w[1] == b'\r' && rest.get(i + 2) == Some(&b'\n') {
            return Some(from + i + 3);
        }
    }
    None
}

/// Checks a whole request head as strictly as the data plane does and answers the length of
/// its body; or the refusal.
fn frame(head: &[u8]) -> Result<u64, Response> {
    let bad = |m: &str| Response::error(400, "bad_request", m);
    if head.len() > MAX_HEAD {
        return Err(head_error(HeadError::TooLarge));
    }
    check_raw_head(head).map_err(head_error)?;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut storage);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("malformed request: no request line")),
        Err(httparse::Error::TooManyHeaders) => return Err(head_error(HeadError::TooManyHeaders)),
        Err(e) => return Err(bad(&format!("malformed request: {e}"))),
    }
    let method = r.method.unwrap_or("");
    match hyper::Method::from_bytes(method.as_bytes()) {
        Err(_) => return Err(bad("invalid method")),
        // hyper would take a 2xx answer to it as the start of a tunnel.
        Ok(m) if m == hyper::Method::CONNECT => {
            return Err(Response::error(405, "method_not_allowed", "CONNECT is not served here"))
        }
        Ok(_) => {}
    }
    let target = r.path.unwrap_or("");
    if !target.starts_with('/') || target.contains('#') || hyper::Uri::try_from(target).is_err() {
        return Err(bad("the request target must be a path starting with '/'"));
    }
    let (mut lengths, mut length, mut te) = (0, 0u64, false);
    let mut opts = ConnectionOptions::default();
    for h in r.headers.iter() {
        if h.name.contains('_') {
            return Err(bad("'_' in a header name"));
        }
        if HeaderName::from_bytes(h.name.as_bytes()).is_err() || HeaderValue::from_bytes(h.value).is_err() {
            return Err(bad(&format!("invalid header field {:?}", h.name)));
        }
        match classify(h.name) {
            Known::ContentLength => {
                lengths += 1;
                length = parse_content_length(h.value).ok_or_else(|| bad("invalid Content-Length"))?;
            }
            Known::TransferEncoding => te = true,
            Known::Connection => opts.add(h.value).map_err(head_error)?,
            _ => {}
        }
    }
    if lengths > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if te {
        if lengths > 0 {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        return Err(Response::error(411, "length_required", "send the body with Content-Length"));
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(head: &str) -> (u16, String) {
        let r = frame(head.as_bytes()).expect_err(head);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (r.status, v["message"].as_str().unwrap().to_string())
    }

    #[test]
    fn heads_are_framed_strictly() {
        let ok = "PUT /admin/v1/config?dry_run=true HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(frame(ok.as_bytes()).unwrap(), 12);
        assert_eq!(frame(b"GET / HTTP/1.0\r\n\r\n").unwrap(), 0);
        for (head, status, what) in [
            ("PUT / HTTP/1.1\r\nContent-Length: +2\r\n\r\n", 400, "Content-Length"),
            ("PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 400, "Content-Length"),
            ("PUT / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n", 400, "Content-Length"),
            ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "Content-Length"),
            ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", 400, "Transfer-Encoding"),
            ("PUT / HTTP/1.1\r\nContent_Length: 2\r\n\r\n", 400, "'_'"),
            ("GET / HTTP/1.1\nHost: x\n\n", 400, "LF"),
            ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "CR"),
            ("GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "path"),
            ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "path"),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed"),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, "malformed"),
            ("\r\n\r\n", 400, "malformed"),
            ("CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", 405, "CONNECT"),
        ] {
            let (s, m) = refused(head);
            assert_eq!(s, status, "{head:?}: {m}");
            assert!(m.to_ascii_lowercase().contains(&what.to_ascii_lowercase()), "{head:?}: {m}");
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")).0, 431);
    }

    #[test]
    fn head_ends_are_found_across_reads() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        let whole = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 1..whole.len() {
            let found = head_end(&whole[..split], 0).or_else(|| head_end(whole, split));
            assert_eq!(found, Some(whole.len()), "split at {split}");
        }
    }
}
