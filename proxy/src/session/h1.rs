//! The HTTP/1 session: a client connection's stream, its receive buffer (pipelined requests
//! wait there), the answer being written, and the framing both ways: the request body's
//! (Content-Length or chunked, decoded here) and the answer's (Content-Length, chunked, or
//! until close for an HTTP/1.0 client).
//!
//! Hot path: no allocation once the buffers have grown; one write per flush.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::time::Instant;
use ringway_policy::{HeaderList, ResponseExtras, ResponseHead};

use super::message::{Answer, Asked, BodyLen, HeadRead, Piece};
use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::framing::coding_bit;
use crate::h1::head::{check_partial_head, BodyKind, HeadError};
use crate::h1::write::{encode_chunk, format_dec, push_dec, push_framing, push_header, push_status_line, reason};
use crate::io::{read_more, write_pair, write_range, Pair};
use crate::respond::ProxyError;
use crate::stream::Stream;
use crate::worker::{ServerLimits, Worker};

/// Body data shorter than this goes into the answer's buffer behind its head (one plain
/// write); longer, beside it in a vectored write.
const COPY_BELOW: usize = 4096;

/// Receive buffer to start with, and the size buffers shrink back to between requests.
const INITIAL_BUF: usize = 4096;

/// How far the request body has come.
#[derive(Debug, Default)]
pub(crate) struct BodyProgress {
    decoder: Option<ChunkedDecoder>,
    /// Bytes still to read (Content-Length bodies).
    remaining: u64,
    /// Body bytes taken so far.
    pub(crate) taken: u64,
    pub(crate) done: bool,
    /// Body bytes received, and time spent waiting for them (for the minimum rate: only the
    /// client's own time counts, not the upstream's).
    received: u64,
    waited: Duration,
}

impl BodyProgress {
    /// The deadline of the next read of the body, starting `now`: the idle timeout, or sooner
    /// when waiting any longer would take the body's average rate, once the grace period is
    /// spent, below the minimum.
    fn deadline(&self, limits: &ServerLimits, now: Instant) -> Instant {
        if limits.body_min_rate == 0 {
            return now + limits.body_timeout;
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / limits.body_min_rate);
        let left = earned.max(limits.body_grace).saturating_sub(self.waited);
        // A few milliseconds at least, so bytes already waiting in the socket are still read.
        now + left.clamp(Duration::from_millis(10), limits.body_timeout)
    }
}

/// One HTTP/1 client connection.
pub struct H1Session {
    pub(crate) stream: Stream,
    /// Bytes received and not yet used (the rest of the request, or the next one).
    pub(crate) rbuf: Vec<u8>,
    /// The answer's bytes not yet written.
    pub(crate) out: Vec<u8>,
    asked: Asked,
    /// The answer's body goes with the chunked coding.
    chunked: bool,
    pub(crate) body: BodyProgress,
    /// Scratch for vectored writes (see [`Pair`]), made on first use.
    iov: Option<Box<[libc::iovec; 2]>>,
}

impl H1Session {
    pub fn new(stream: Stream) -> Self {
        H1Session {
            stream,
            rbuf: Vec::with_capacity(INITIAL_BUF),
            out: Vec::new(),
            asked: Asked::default(),
            chunked: false,
            body: BodyProgress { done: true, ..BodyProgress::default() },
            iov: None,
        }
    }

    pub(super) fn version(&self) -> ringway_policy::Version {
        if self.asked.http10 {
            ringway_policy::Version::Http10
        } else {
            ringway_policy::Version::Http11
        }
    }

    /// Drops the first `n` received bytes.
    pub fn consume(&mut self, n: usize) {
        if n >= self.rbuf.len() {
            self.rbuf.clear();
        } else {
            self.rbuf.copy_within(n.., 0);
            self.rbuf.truncate(self.rbuf.len() - n);
        }
    }

    /// Starts a request whose head (`head_len` bytes) was read: the head is consumed, the body
    /// framed by `body` follows.
    pub fn begin(&mut self, head_len: usize, asked: Asked, body: BodyKind) {
        self.consume(head_len);
        self.asked = asked;
        self.chunked = false;
        self.body = BodyProgress {
            decoder: matches!(body, BodyKind::Chunked).then(ChunkedDecoder::new),
            remaining: match body {
                BodyKind::Length(n) => n,
                _ => 0,
            },
            taken: 0,
            done: matches!(body, BodyKind::None | BodyKind::Length(0)),
            // What came with the head counts.
            received: self.rbuf.len() as u64,
            waited: Duration::ZERO,
        };
    }

    /// Sets what the request asked of its answer, for an answer given before [`Self::begin`]
    /// (a refused head).
    pub fn asked(&mut self, asked: Asked) {
        self.asked = asked;
        self.chunked = false;
    }

    /// Gives back memory a large request or answer needed.
    pub fn between_requests(&mut self) {
        if self.rbuf.capacity() > 4 * INITIAL_BUF && self.rbuf.len() <= INITIAL_BUF {
            self.rbuf.shrink_to(INITIAL_BUF);
        }
        if self.out.capacity() > 4 * INITIAL_BUF {
            self.out = Vec::new();
        }
    }

    pub(super) async fn read_head(
        &mut self,
        worker: &Worker,
        first: bool,
        first_byte: &mut Option<Instant>,
    ) -> HeadRead {
        // Until a head says otherwise, an answer (a refused head) has a body and no framing
        // of the request before.
        self.asked = Asked::default();
        self.chunked = false;
        let limits = &worker.limits;
        let mut deadline = None;
        let mut scanned: usize = 0;
        loop {
            if !self.rbuf.is_empty() {
                let from = scanned.saturating_sub(3);
                if let Some(i) = memchr::memmem::find(&self.rbuf[from..], b"\r\n\r\n") {
                    return HeadRead::Ready(from + i + 4);
                }
                // Refuse a head with bare LFs now rather than after a timeout; the last byte may
                // be a CR whose LF has not arrived yet.
                if let Err(e) = check_partial_head(&self.rbuf) {
                    return HeadRead::Fail(ProxyError::Head(e));
                }
                scanned = self.rbuf.len();
                if self.rbuf.len() >= limits.max_head_bytes {
                    return HeadRead::Fail(ProxyError::Head(HeadError::TooLarge));
                }
            }
            let idle = self.rbuf.is_empty();
            if idle && worker.draining.get() {
                return HeadRead::Closed;
            }
            let d = match deadline {
                Some(d) => d,
                None if idle && !first => Instant::now() + limits.keepalive_timeout,
                None => {
                    let now = Instant::now();
                    let d = now + limits.head_timeout;
                    if !idle {
                        deadline = Some(d);
                        *first_byte = Some(now);
                    }
                    d
                }
            };
            let slot = idle.then(|| worker.idle_enter(self.stream.as_raw_fd()));
            let want = (limits.max_head_bytes - self.rbuf.len()).min(INITIAL_BUF);
            let buf = std::mem::take(&mut self.rbuf);
            let (r, buf) = read_more(&mut self.stream, buf, want, d).await;
            self.rbuf = buf;
            if let Some(s) = slot {
                worker.idle_leave(s);
            }
            match r {
                Ok(0) => return HeadRead::Closed,
                Ok(_) => {
                    if deadline.is_none() {
                        let now = Instant::now();
                        deadline = Some(now + limits.head_timeout);
                        *first_byte = Some(now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                    return HeadRead::Fail(ProxyError::RequestTimeout);
                }
                Err(_) => return HeadRead::Closed,
            }
        }
    }

    pub(super) async fn read_body(&mut self, limits: &ServerLimits) -> io::Result<usize> {
        let now = Instant::now();
        let buf = std::mem::take(&mut self.rbuf);
        let (r, buf) = read_more(&mut self.stream, buf, 16 * 1024, self.body.deadline(limits, now)).await;
        self.rbuf = buf;
        if limits.body_min_rate > 0 {
            self.body.waited += now.elapsed();
        }
        if let Ok(n) = r {
            self.body.received += n as u64;
        }
        r
    }

    pub(super) fn take_body(&mut self, max: Option<u64>, sink: &mut dyn FnMut(Piece<'_>)) -> Result<(), ProxyError> {
        let p = &mut self.body;
        if p.done {
            return Ok(());
        }
        match &mut p.decoder {
            None => {
                let take = (self.rbuf.len() as u64).min(p.remaining) as usize;
                sink(Piece::Data(&self.rbuf[..take]));
                p.remaining -= take as u64;
                p.taken += take as u64;
                p.done = p.remaining == 0;
                if p.done {
                    sink(Piece::End);
                }
                self.consume(take);
            }
            Some(d) => {
                let mut pos = 0;
                loop {
                    match d.decode(&self.rbuf, &mut pos).map_err(ProxyError::BadRequestBody)? {
                        Chunk::Data(r) => {
                            p.taken += r.len() as u64;
                            if let Some(limit) = max.filter(|l| p.taken > *l) {
                                return Err(ProxyError::BodyTooLarge { limit });
                            }
                            sink(Piece::Data(&self.rbuf[r]));
                        }
                        Chunk::NeedMore => break,
                        Chunk::Done => {
                            sink(Piece::End);
                            p.done = true;
                            break;
                        }
                    }
                }
                self.consume(pos);
            }
        }
        Ok(())
    }

    /// Lends the receive buffer when the body is sized: the buffer and how many of its first
    /// bytes are body, to be written elsewhere without a copy. `None` when the body's framing
    /// needs decoding (then [`Self::take_body`]).
    pub fn lend_body(&mut self) -> Option<(Vec<u8>, usize)> {
        if self.body.decoder.is_some() || self.body.done {
            return None;
        }
        let take = (self.rbuf.len() as u64).min(self.body.remaining) as usize;
        Some((std::mem::take(&mut self.rbuf), take))
    }

    /// Takes back the buffer [`Self::lend_body`] lent, `used` of its body bytes gone.
    pub fn return_body(&mut self, buf: Vec<u8>, used: usize) {
        self.rbuf = buf;
        self.consume(used);
        self.body.remaining -= used as u64;
        self.body.taken += used as u64;
        self.body.done = self.body.remaining == 0;
    }

    pub(super) async fn write_continue(&mut self, worker: &Worker) -> io::Result<()> {
        debug_assert!(self.out.is_empty());
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.flush(worker).await
    }

    pub(super) fn write_head(&mut self, head: &ResponseHead<'_>, a: &Answer<'_>) -> Result<bool, ProxyError> {
        let framed = encode_head(&mut self.out, &self.asked, head, a)?;
        self.chunked = framed.chunked;
        Ok(framed.close)
    }

    pub(super) fn write_body(&mut self, data: &[u8]) {
        if self.asked.head_only {
            return;
        }
        if self.chunked {
            encode_chunk(&mut self.out, data);
        } else {
            self.out.extend_from_slice(data);
        }
    }

    pub(super) async fn send_body(
        &mut self,
        worker: &Worker,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        if self.chunked || self.asked.head_only || (!self.out.is_empty() && range.len() < COPY_BELOW) {
            self.write_body(&buf[range]);
            return (self.flush(worker).await, buf);
        }
        if self.out.is_empty() {
            return write_range(&mut self.stream, buf, range, worker.limits.write_timeout).await;
        }
        // The head waits in the buffer: it and the body go in one vectored write, the body
        // without a copy (and the buffer never grows to the body's size).
        let iov = self
            .iov
            .take()
            .unwrap_or_else(|| Box::new([libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2]));
        let pair = Pair::new(std::mem::take(&mut self.out), buf, range, iov);
        let _watch = worker.watch_write(self.stream.as_raw_fd());
        let (r, pair) = write_pair(&mut self.stream, pair).await;
        let (mut out, buf, iov) = pair.into_parts();
        out.clear();
        self.out = out;
        self.iov = Some(iov);
        (r, buf)
    }

    pub(super) fn end_body(&mut self, trailers: Option<&HeaderList<'_>>) {
        if !self.asked.head_only {
            encode_end(&mut self.out, self.chunked, trailers);
        }
    }

    pub(super) async fn flush(&mut self, worker: &Worker) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (r, mut out) = worker.write_client(&mut self.stream, out).await;
        out.clear();
        self.out = out;
        r
    }
}

/// How an answer's head framed it for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// The body goes with the chunked coding.
    pub chunked: bool,
    /// The connection ends after this answer.
    pub close: bool,
}

/// Writes the HTTP/1 head of an answer to a client that `asked` as it did: status line, the
/// head's fields, `Age` and the policies' fields, framing, and `Connection`. Sans I/O. Fails
/// (writing nothing) when the body carries a transfer coding the client did not accept.
pub fn encode_head(
    out: &mut Vec<u8>,
    asked: &Asked,
    head: &ResponseHead<'_>,
    a: &Answer<'_>,
) -> Result<Framed, ProxyError> {
    let http10 = asked.http10;
    if !a.codings.is_empty() {
        // Only to an HTTP/1.1 client that said (in `TE`) it accepts every one of them.
        let accepted = |t: &[u8]| coding_bit(t.trim_ascii()) & asked.te_accepts != 0;
        if http10 || !a.codings.split(|b| *b == b',').all(accepted) {
            return Err(ProxyError::UpstreamProtocol("a transfer coding the client did not accept"));
        }
    }
    let streamed = a.body == BodyLen::Unknown;
    let chunked = streamed && !http10;
    // An HTTP/1.0 client learns where a streamed body ends only from the close.
    let close = a.close || (http10 && streamed);
    let phrase = head.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| reason(head.status()));
    push_status_line(out, head.status(), phrase);
    for h in head.headers.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    if let Some(age) = a.age {
        out.extend_from_slice(b"age: ");
        push_dec(out, age);
        out.extend_from_slice(b"\r\n");
    }
    push_extras(out, a.extras);
    // The codec's framing rules: a length, or chunked (with the codings the body carries)
    // unless the client speaks HTTP/1.0.
    let kind = match a.body {
        BodyLen::None => BodyKind::None,
        BodyLen::Known(n) => BodyKind::Length(n),
        BodyLen::Unknown => BodyKind::Chunked,
    };
    push_framing(out, kind, a.codings, http10);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Framed { chunked, close })
}

/// Writes the end of a body framed `chunked` or not: for chunked, the last chunk and the
/// trailer section (a body framed otherwise has no place for trailers: they are dropped).
pub fn encode_end(out: &mut Vec<u8>, chunked: bool, trailers: Option<&HeaderList<'_>>) {
    if !chunked {
        return;
    }
    out.extend_from_slice(b"0\r\n");
    for h in trailers.into_iter().flat_map(HeaderList::iter) {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the numeric header fields policies asked for.
fn push_extras(out: &mut Vec<u8>, extras: Option<&ResponseExtras>) {
    let mut buf = [0u8; 20];
    // Policies often send one value under two names in a row: format it once.
    let mut last: Option<(u64, usize)> = None;
    for (name, value) in extras.into_iter().flat_map(ResponseExtras::iter) {
        let start = match last {
            Some((v, start)) if v == value => start,
            _ => {
                let start = buf.len() - format_dec(value, &mut buf).len();
                last = Some((value, start));
                start
            }
        };
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[start..]);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((name, value)) = extras.and_then(|e| e.text) {
        push_header(out, name.as_bytes(), value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_policy::Version;

    fn head(status: u16) -> ResponseHead<'static> {
        let mut headers = HeaderList::default();
        headers.push("x-a", &b"1"[..]);
        ResponseHead::new(status, None, Version::Http11, headers)
    }

    fn written(asked: Asked, a: Answer<'_>) -> (Result<Framed, ProxyError>, String) {
        let mut out = Vec::new();
        let r = encode_head(&mut out, &asked, &head(200), &a);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_streamed_body_is_chunked_for_http11_and_ends_the_connection_for_http10() {
        let h11 = Asked::default();
        let (r, text) = written(h11, Answer::new(BodyLen::Unknown, false));
        assert_eq!(r.unwrap(), Framed { chunked: true, close: false });
        assert_eq!(text, "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        let h10 = Asked { http10: true, ..Asked::default() };
        let (r, text) = written(h10, Answer::new(BodyLen::Unknown, false));
        assert_eq!(r.unwrap(), Framed { chunked: false, close: true });
        assert_eq!(text, "HTTP/1.1 200 OK\r\nx-a: 1\r\nconnection: close\r\n\r\n");
        let (r, text) = written(h10, Answer::new(BodyLen::Known(3), false));
        assert_eq!(r.unwrap(), Framed { chunked: false, close: false });
        assert!(text.ends_with("content-length: 3\r\nconnection: keep-alive\r\n\r\n"), "{text}");
    }

    #[test]
    fn age_extras_and_codings_go_where_the_client_accepts_them() {
        let mut extras = ResponseExtras::default();
        extras.push("ratelimit-limit", 10);
        extras.push("x-ratelimit-limit", 10);
        let a = Answer { extras: Some(&extras), age: Some(5), ..Answer::new(BodyLen::Known(0), true) };
        let (_, text) = written(Asked::default(), a);
        assert!(
            text.ends_with(
                "age: 5\r\nratelimit-limit: 10\r\nx-ratelimit-limit: 10\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ),
            "{text}"
        );
        let gzip = Answer { codings: b"gzip", ..Answer::new(BodyLen::Unknown, false) };
        let (r, text) = written(Asked::default(), gzip);
        assert!(r.is_err() && text.is_empty(), "a coding the client did not accept is refused, nothing written");
        let te = Asked { te_accepts: coding_bit(b"gzip"), ..Asked::default() };
        let (r, text) = written(te, gzip);
        assert!(r.is_ok() && text.contains("transfer-encoding: gzip, chunked\r\n"), "{text}");
    }

    #[test]
    fn the_end_of_a_chunked_body_carries_its_trailers() {
        let mut trailers = HeaderList::default();
        trailers.push("grpc-status", &b"0"[..]);
        let mut out = Vec::new();
        encode_end(&mut out, true, Some(&trailers));
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
        out.clear();
        encode_end(&mut out, true, None);
        assert_eq!(out, b"0\r\n\r\n");
        out.clear();
        encode_end(&mut out, false, Some(&trailers));
        assert!(out.is_empty(), "a sized body has no trailer section");
    }
}
