//! One request on a multiplexed HTTP/2 upstream connection, as the HTTP/1.1 byte stream the
//! exchange speaks ([`H2Up`]), and a worker's table of those connections. A leaf: the stream
//! type holds it, the connection management in [`super::client`] makes it.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::write::encode_chunk;

/// Streams one upstream connection carries at once before another is opened.
pub(super) const STREAMS_PER_CONNECTION: usize = 100;

/// One multiplexed connection to an upstream target.
pub(super) struct Conn {
    pub(super) send: h2::client::SendRequest<Bytes>,
    pub(super) alive: Rc<Cell<bool>>,
    pub(super) open: Rc<Cell<usize>>,
}

/// A worker's HTTP/2 connections to upstreams, by target and TLS settings.
#[derive(Default)]
pub struct Connections {
    pub(super) by_key: HashMap<(std::net::SocketAddr, u64), Vec<Conn>>,
}

impl Connections {
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the request body arrives in the bytes written.
enum ReqBody {
    None,
    Length(u64),
    Chunked(ChunkedDecoder, Vec<u8>),
}

impl monoio::io::AsyncReadRent for H2Up {
    async fn read<T: monoio::buf::IoBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
        let (ptr, room) = (buf.write_ptr(), buf.bytes_total());
        match self.read_bytes(ptr, room).await {
            Ok(n) => {
                // SAFETY: `n` bytes from the start of the buffer were written.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: monoio::buf::IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Err(io::Error::other("vectored reads are not used on upstream streams")), buf)
    }
}

impl monoio::io::AsyncWriteRent for H2Up {
    async fn write<T: monoio::buf::IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, owned by it while this call holds it.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_bytes(data).await;
        (r, buf)
    }

    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let (iov, n) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        let mut total = 0;
        for i in 0..n {
            // SAFETY: the buffer owns `n` iovecs over initialised bytes it owns.
            let v = unsafe { *iov.add(i) };
            let data = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            if let Err(e) = self.write_bytes(data).await {
                return (Err(e), buf);
            }
            total += data.len();
        }
        (Ok(total), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(s) = self.stream.as_mut() {
            s.send_reset(h2::Reason::CANCEL);
        }
        Ok(())
    }
}

/// One request on an HTTP/2 upstream connection, as an HTTP/1.1 byte stream.
pub struct H2Up {
    send: h2::client::SendRequest<Bytes>,
    open: Rc<Cell<usize>>,
    https: bool,
    /// Longest wait for a stream slot or window (the upstream's idle timeout).
    wait: std::time::Duration,
    /// The request head until it is complete.
    head: Vec<u8>,
    sent: bool,
    body: ReqBody,
    stream: Option<h2::SendStream<Bytes>>,
    response: Option<h2::client::ResponseFuture>,
    recv: Option<h2::RecvStream>,
    /// The answer as HTTP/1.1 bytes, not yet read.
    out: Vec<u8>,
    out_pos: usize,
    chunked: bool,
    done: bool,
}

impl std::fmt::Debug for H2Up {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Up").field("sent", &self.sent).field("done", &self.done).finish_non_exhaustive()
    }
}

impl Drop for H2Up {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

/// Fields that belong to one HTTP/1 connection (or to HTTP/1 framing).
fn connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "host" | "expect"
    )
}

impl H2Up {
    pub(super) fn new(
        send: h2::client::SendRequest<Bytes>,
        open: Rc<Cell<usize>>,
        https: bool,
        wait: std::time::Duration,
    ) -> H2Up {
        open.set(open.get() + 1);
        H2Up {
            send,
            open,
            https,
            wait,
            head: Vec::new(),
            sent: false,
            body: ReqBody::None,
            stream: None,
            response: None,
            recv: None,
            out: Vec::new(),
            out_pos: 0,
            chunked: false,
            done: false,
        }
    }

    /// Takes request bytes: the head (sent once complete), then the body.
    pub async fn write_bytes(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.sent {
            self.body_bytes(data).await?;
            return Ok(data.len());
        }
        self.head.extend_from_slice(data);
        let Some(end) = memchr::memmem::find(&self.head, b"\r\n\r\n") else { return Ok(data.len()) };
        let rest = self.head.split_off(end + 4);
        self.send_head().await?;
        if !rest.is_empty() {
            self.body_bytes(&rest).await?;
        }
        Ok(data.len())
    }

    /// The request the head written so far makes, and how its body arrives.
    fn request(&self) -> io::Result<(http::Request<()>, ReqBody)> {
        let bad = |m: &'static str| io::Error::new(io::ErrorKind::InvalidInput, m);
        let mut fields = [httparse::EMPTY_HEADER; crate::h1::head::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        if !matches!(req.parse(&self.head), Ok(httparse::Status::Complete(_))) {
            return Err(bad("a request head the gateway wrote does not parse"));
        }
        let mut authority = "";
        let mut length = None;
        let mut chunked = false;
        let mut builder = http::Request::builder().method(req.method.unwrap_or("GET"));
        for h in req.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            match lower.as_str() {
                "host" => authority = std::str::from_utf8(h.value).unwrap_or(""),
                "content-length" => length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()),
                "transfer-encoding" => chunked = true,
                _ => {}
            }
            if connection_specific(&lower) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(h.value)) {
                builder = builder.header(n, v);
            }
        }
        let scheme = if self.https { "https" } else { "http" };
        let uri = format!("{scheme}://{authority}{}", req.path.unwrap_or("/"));
        let request = builder.uri(uri).body(()).map_err(|_| bad("the request does not make an HTTP/2 request"))?;
        let body = match (chunked, length) {
            (true, _) => ReqBody::Chunked(ChunkedDecoder::new(), Vec::new()),
            (false, Some(n)) if n > 0 => ReqBody::Length(n),
            _ => ReqBody::None,
        };
        Ok((request, body))
    }

    /// Opens the stream with `request`'s head (ending it there when `end`).
    async fn open(
        &mut self,
        request: http::Request<()>,
        end: bool,
    ) -> io::Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
        // The upstream's limit on concurrent streams holds the request here, for a while.
        match monoio::time::timeout(self.wait, std::future::poll_fn(|cx| self.send.poll_ready(cx))).await {
            Ok(r) => r.map_err(broken)?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no stream free on the upstream connection")),
        }
        self.send.send_request(request, end).map_err(broken)
    }

    async fn send_head(&mut self) -> io::Result<()> {
        let (request, body) = self.request()?;
        self.body = body;
        let end = matches!(self.body, ReqBody::None);
        let (response, stream) = self.open(request, end).await?;
        self.response = Some(response);
        self.stream = Some(stream);
        self.sent = true;
        Ok(())
    }

    /// Opens a gRPC call with the HTTP/1.1 request head `head` (the pipeline's upstream
    /// request): its messages are the caller's to send on the stream returned, both ways at
    /// once. `te: trailers` goes with it, as gRPC requires.
    pub async fn open_call(
        &mut self,
        head: &[u8],
        end: bool,
    ) -> io::Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
        self.head.clear();
        self.head.extend_from_slice(head);
        let (mut request, _) = self.request()?;
        request.headers_mut().insert(http::header::TE, HeaderValue::from_static("trailers"));
        self.sent = true;
        self.open(request, end).await
    }

    async fn body_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.body {
            ReqBody::None => Ok(()),
            ReqBody::Length(left) => {
                let n = (data.len() as u64).min(*left) as usize;
                *left -= n as u64;
                let end = *left == 0;
                self.send_data(Bytes::copy_from_slice(&data[..n]), end).await
            }
            ReqBody::Chunked(decoder, carry) => {
                carry.extend_from_slice(data);
                let mut pos = 0;
                let mut pieces = Vec::new();
                let mut end = false;
                loop {
                    match decoder.decode(carry, &mut pos) {
                        Ok(Chunk::Data(r)) => pieces.push(Bytes::copy_from_slice(&carry[r])),
                        Ok(Chunk::NeedMore) => break,
                        Ok(Chunk::Done) => {
                            end = true;
                            break;
                        }
                        Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunked body")),
                    }
                }
                carry.drain(..pos);
                let last = pieces.len();
                for (i, p) in pieces.into_iter().enumerate() {
                    self.send_data(p, end && i + 1 == last).await?;
                }
                if end && last == 0 {
                    self.send_data(Bytes::new(), true).await?;
                }
                Ok(())
            }
        }
    }

    async fn send_data(&mut self, mut data: Bytes, end: bool) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else { return Ok(()) };
        if data.is_empty() {
            return s.send_data(data, end).map_err(broken);
        }
        while !data.is_empty() {
            s.reserve_capacity(data.len());
            let n = match monoio::time::timeout(self.wait, std::future::poll_fn(|cx| s.poll_capacity(cx))).await {
                Ok(Some(Ok(n))) => n,
                Ok(Some(Err(e))) => return Err(broken(e)),
                Ok(None) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(_) => {
                    s.send_reset(h2::Reason::CANCEL);
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the upstream kept its window shut"));
                }
            };
            let chunk = data.split_to(n.min(data.len()));
            s.send_data(chunk, end && data.is_empty()).map_err(broken)?;
        }
        Ok(())
    }

    /// Answer bytes into `dst` (`room` bytes): `Ok(0)` once the answer ended.
    pub async fn read_bytes(&mut self, dst: *mut u8, room: usize) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(room);
                // SAFETY: `dst` is valid for `room` bytes and does not overlap `out`.
                unsafe { std::ptr::copy_nonoverlapping(self.out.as_ptr().add(self.out_pos), dst, n) };
                self.out_pos += n;
                return Ok(n);
            }
            self.out.clear();
            self.out_pos = 0;
            if self.done {
                return Ok(0);
            }
            if self.recv.is_none() {
                let Some(response) = self.response.take() else { return Ok(0) };
                let (parts, body) = response.await.map_err(broken)?.into_parts();
                self.head_bytes(&parts, body.is_end_stream());
                self.recv = Some(body);
                continue;
            }
            let Some(recv) = self.recv.as_mut() else { return Ok(0) };
            match recv.data().await {
                Some(Ok(d)) => {
                    let _ = recv.flow_control().release_capacity(d.len());
                    if self.chunked {
                        encode_chunk(&mut self.out, &d);
                    } else {
                        self.out.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => return Err(broken(e)),
                None => {
                    let trailers = recv.trailers().await.map_err(broken)?;
                    if self.chunked {
                        self.out.extend_from_slice(b"0\r\n");
                        for (n, v) in trailers.iter().flatten() {
                            push(&mut self.out, n.as_str(), v.as_bytes());
                        }
                        self.out.extend_from_slice(b"\r\n");
                    }
                    self.done = true;
                }
            }
        }
    }

    /// The answer's head as HTTP/1.1: a length when given (none when the stream ended with
    /// its head), else chunked.
    fn head_bytes(&mut self, parts: &http::response::Parts, ended: bool) {
        let status = parts.status;
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_str().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        self.out.extend_from_slice(b"\r\n");
        let mut sized = false;
        for (n, v) in parts.headers.iter() {
            if connection_specific(n.as_str()) {
                continue;
            }
            sized |= n == http::header::CONTENT_LENGTH;
            push(&mut self.out, n.as_str(), v.as_bytes());
        }
        if !sized && !status.is_informational() && status != 204 && status != 304 {
            if ended {
                self.out.extend_from_slice(b"content-length: 0\r\n");
            } else {
                self.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                self.chunked = true;
            }
        }
        self.out.extend_from_slice(b"\r\n");
        self.done = ended && !self.chunked;
    }
}

fn push(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
