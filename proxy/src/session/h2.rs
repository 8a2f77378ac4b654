//! One HTTP/2 stream as a session: the request's head, turned into the HTTP/1.1 head the
//! pipeline reads (so routing, policies, the cache and the upstream request are the same code
//! and the same checks whatever the client speaks), its body from the stream's DATA frames, and
//! the answer as HEADERS, DATA (within the client's flow-control window) and trailers.
//!
//! Hot path: one small copy of the head per request; the answer's body goes out without a
//! copy of its own once it is in the session's buffer.

use std::io;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use monoio::time::Instant;
use ringway_policy::{HeaderList, ResponseHead};

use super::message::{Answer, Asked, BodyLen, Piece};
use crate::h1::head::BodyKind;
use crate::respond::ProxyError;
use crate::worker::{ServerLimits, Worker};

/// How far the request body has come.
#[derive(Debug, Default)]
struct Body {
    /// The declared length (`content-length`), when there is one.
    length: Option<u64>,
    taken: u64,
    /// The client ended the stream.
    ended: bool,
    /// The end was handed on.
    done: bool,
}

/// One client stream of an HTTP/2 connection.
pub struct H2Stream {
    /// The request's head as HTTP/1.1, then body bytes received and not yet taken.
    pub(crate) rbuf: Vec<u8>,
    recv: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    send: Option<h2::SendStream<Bytes>>,
    /// The answer's head, sent with the first flush (with the end of the stream when the whole
    /// answer is here by then).
    head: Option<http::Response<()>>,
    /// The answer's body not yet sent.
    out: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// Body bytes of a sized answer still to come (`None`: until `end_body`).
    to_come: Option<u64>,
    /// The answer is complete (its last byte, or `end_body`), and the end was sent.
    ending: bool,
    ended: bool,
    head_only: bool,
    body: Body,
    /// Where a misbehaving client is reported to its connection.
    offense: std::rc::Rc<std::cell::Cell<Option<&'static str>>>,
    /// A gRPC call (`content-type: application/grpc`): the gateway's own answers to it are gRPC
    /// statuses.
    grpc: Option<GrpcCall>,
}

/// What a gRPC call asked of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall {
    /// `grpc-timeout`: the call's deadline from when its head arrived.
    pub deadline: Option<Instant>,
}

/// A stream's halves, for a relay that moves a call's messages both ways at once.
pub struct Halves<'s> {
    pub recv: &'s mut h2::RecvStream,
    pub respond: &'s mut h2::server::SendResponse<Bytes>,
    /// Body bytes already received (sent on before the rest).
    pub received: Vec<u8>,
    /// The client ended its half already.
    pub ended: bool,
}

/// Fields that belong to one HTTP/1 connection and have no place in HTTP/2.
fn connection_specific(name: &str) -> bool {
    matches!(name, "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te")
}

impl H2Stream {
    /// A stream whose request is `parts`; writes its HTTP/1.1 head into the session's buffer
    /// and returns the session and the head's length.
    pub fn new(
        parts: &http::request::Parts,
        recv: h2::RecvStream,
        respond: h2::server::SendResponse<Bytes>,
        offense: std::rc::Rc<std::cell::Cell<Option<&'static str>>>,
    ) -> (H2Stream, usize) {
        let ended = recv.is_end_stream();
        let mut rbuf = Vec::with_capacity(512);
        let length = encode_request_head(parts, ended, &mut rbuf);
        let head_len = rbuf.len();
        let body = Body { length, ended, done: ended, ..Body::default() };
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| crate::grpc::Kind::of_content_type(v.as_bytes()))
            .filter(|k| *k == crate::grpc::Kind::Grpc)
            .map(|_| GrpcCall {
                deadline: parts
                    .headers
                    .get("grpc-timeout")
                    .and_then(|v| crate::grpc::parse_timeout(v.as_bytes()))
                    .map(|t| Instant::now() + t),
            });
        let s = H2Stream {
            rbuf,
            recv,
            respond,
            send: None,
            head: None,
            out: Vec::new(),
            trailers: None,
            to_come: None,
            ending: false,
            ended: false,
            head_only: false,
            body,
            offense,
            grpc,
        };
        (s, head_len)
    }

    pub(super) fn begin(&mut self, head_len: usize, asked: Asked, body: BodyKind) {
        self.rbuf.drain(..head_len.min(self.rbuf.len()));
        self.head_only = asked.head_only;
        if matches!(body, BodyKind::None | BodyKind::Length(0)) && self.body.ended {
            self.body.done = true;
        }
    }

    pub(super) fn skip(&mut self, asked: Asked) {
        self.rbuf.clear();
        self.head_only = asked.head_only;
    }

    pub fn grpc(&self) -> Option<GrpcCall> {
        self.grpc
    }

    /// The stream's halves, once the request's head was taken; the stream counts as answered
    /// from here on (the relay ends it).
    pub fn halves(&mut self) -> Halves<'_> {
        self.ended = true;
        Halves {
            recv: &mut self.recv,
            respond: &mut self.respond,
            received: std::mem::take(&mut self.rbuf),
            ended: self.body.ended,
        }
    }

    /// A gRPC call answered by the gateway: trailers-only (HTTP 200 and the status in the
    /// head of a stream that ends with it), with the reply's own fields (`retry-after`,
    /// `www-authenticate`...).
    pub(super) fn write_grpc_status(&mut self, code: u32, message: &str, fields: &[(String, String)], id: &[u8]) {
        let mut resp = http::Response::new(());
        let h = resp.headers_mut();
        for (n, v) in fields {
            if n.eq_ignore_ascii_case("content-type") || n.eq_ignore_ascii_case("content-length") {
                continue;
            }
            if let (Ok(n), Ok(v)) =
                (HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(v))
            {
                h.append(n, v);
            }
        }
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(code));
        if let Ok(m) = HeaderValue::from_str(&crate::grpc::encode_message(message)) {
            h.insert("grpc-message", m);
        }
        if let Ok(v) = HeaderValue::from_bytes(id) {
            h.insert("x-request-id", v);
        }
        self.out.clear();
        self.trailers = None;
        self.to_come = Some(0);
        self.ending = true;
        self.head = Some(resp);
    }

    pub(super) fn body_done(&self) -> bool {
        self.body.done
    }

    pub(super) fn body_taken(&self) -> u64 {
        self.body.taken
    }

    /// Waits for more of the body; `Ok(0)`: the client reset the stream.
    pub(super) async fn read_body(&mut self, limits: &ServerLimits) -> io::Result<usize> {
        if self.body.ended {
            return Ok(1);
        }
        match monoio::time::timeout(limits.body_timeout, self.recv.data()).await {
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "body timed out")),
            Ok(None) => {
                self.body.ended = true;
                Ok(1)
            }
            Ok(Some(Ok(data))) => {
                let n = data.len();
                // The window opens again as the bytes are taken in.
                let _ = self.recv.flow_control().release_capacity(n);
                self.rbuf.extend_from_slice(&data);
                if self.recv.is_end_stream() {
                    self.body.ended = true;
                }
                Ok(n.max(1))
            }
            Ok(Some(Err(_))) => Ok(0),
        }
    }

    pub(super) fn take_body(&mut self, max: Option<u64>, sink: &mut dyn FnMut(Piece<'_>)) -> Result<(), ProxyError> {
        if self.body.done {
            return Ok(());
        }
        if !self.rbuf.is_empty() {
            self.body.taken += self.rbuf.len() as u64;
            if let Some(limit) = max.filter(|l| self.body.taken > *l) {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            if self.body.length.is_some_and(|n| self.body.taken > n) {
                return Err(ProxyError::BodyLength("more DATA than content-length"));
            }
            sink(Piece::Data(&self.rbuf));
            self.rbuf.clear();
        }
        if self.body.ended {
            if self.body.length.is_some_and(|n| self.body.taken != n) {
                return Err(ProxyError::BodyLength("less DATA than content-length"));
            }
            sink(Piece::End);
            self.body.done = true;
        }
        Ok(())
    }

    pub(super) fn write_head(&mut self, head: &ResponseHead<'_>, a: &Answer<'_>) -> Result<bool, ProxyError> {
        if !a.codings.is_empty() {
            return Err(ProxyError::UpstreamProtocol("a transfer coding HTTP/2 cannot carry"));
        }
        let mut resp = http::Response::new(());
        *resp.status_mut() =
            http::StatusCode::from_u16(head.status()).map_err(|_| ProxyError::UpstreamProtocol("bad status"))?;
        let fields = resp.headers_mut();
        for h in head.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            if connection_specific(&lower) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(&h.value)) {
                fields.append(n, v);
            }
        }
        if let Some(age) = a.age {
            fields.insert(http::header::AGE, HeaderValue::from(age));
        }
        for (name, value) in a.extras.into_iter().flat_map(|e| e.iter()) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                fields.insert(n, HeaderValue::from(value));
            }
        }
        if let Some((name, value)) = a.extras.and_then(|e| e.text) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                fields.insert(n, v);
            }
        }
        if let BodyLen::Known(n) = a.body {
            if !matches!(head.status(), 204 | 304) {
                fields.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        // A sized answer ends with its last byte (HTTP/1 marks no end for it).
        self.to_come = match a.body {
            _ if self.head_only => Some(0),
            BodyLen::None => Some(0),
            BodyLen::Known(n) => Some(n),
            BodyLen::Unknown => None,
        };
        self.ending = self.to_come == Some(0);
        self.head = Some(resp);
        // The stream ends; the connection goes on.
        Ok(false)
    }

    pub(super) fn write_body(&mut self, data: &[u8]) {
        if !self.head_only {
            self.out.extend_from_slice(data);
            if let Some(n) = self.to_come.as_mut() {
                *n = n.saturating_sub(data.len() as u64);
                self.ending |= *n == 0;
            }
        }
    }

    pub(super) fn end_body(&mut self, trailers: Option<&HeaderList<'_>>) {
        self.ending = true;
        if let Some(t) = trailers.filter(|t| t.iter().next().is_some()) {
            let mut map = HeaderMap::new();
            for h in t.iter() {
                let lower = h.name.to_ascii_lowercase();
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(&h.value)) {
                    map.append(n, v);
                }
            }
            self.trailers = Some(map);
        }
    }

    pub(super) fn pending(&self) -> bool {
        self.head.is_some() || !self.out.is_empty() || (self.ending && !self.ended)
    }

    pub(super) fn discard(&mut self) {
        self.head = None;
        self.out.clear();
    }

    pub(super) async fn send_body(
        &mut self,
        worker: &Worker,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        self.write_body(&buf[range]);
        (self.flush(worker).await, buf)
    }

    /// Sends the head, the body at hand (as the client's window allows, each wait bounded by
    /// the write timeout) and, once the answer is complete, its end.
    pub(super) async fn flush(&mut self, worker: &Worker) -> io::Result<()> {
        let broken = |e: h2::Error| io::Error::new(io::ErrorKind::BrokenPipe, e);
        let last = self.ending && self.trailers.is_none();
        if let Some(head) = self.head.take() {
            let end = last && self.out.is_empty();
            self.send = Some(self.respond.send_response(head, end).map_err(broken)?);
            self.ended = end;
        }
        if self.ended {
            return Ok(());
        }
        let Some(send) = self.send.as_mut() else { return Ok(()) };
        let mut data = Bytes::from(std::mem::take(&mut self.out));
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let deadline = Instant::now() + worker.limits.write_timeout;
            let granted = monoio::time::timeout_at(deadline, std::future::poll_fn(|cx| send.poll_capacity(cx))).await;
            let n = match granted {
                Ok(Some(Ok(n))) => n,
                Ok(Some(Err(e))) => return Err(broken(e)),
                Ok(None) => return Err(io::ErrorKind::BrokenPipe.into()),
                // The client keeps its window shut: the stream is given up.
                Err(_) => {
                    send.send_reset(h2::Reason::FLOW_CONTROL_ERROR);
                    self.offense.set(Some("zero_window"));
                    self.ended = true;
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the client's window stayed shut"));
                }
            };
            let chunk = data.split_to(n.min(data.len()));
            let end = last && data.is_empty();
            send.send_data(chunk, end).map_err(broken)?;
            self.ended = end;
        }
        if self.ending && !self.ended {
            match self.trailers.take() {
                Some(t) => send.send_trailers(t).map_err(broken)?,
                None => send.send_data(Bytes::new(), true).map_err(broken)?,
            }
            self.ended = true;
        }
        Ok(())
    }

    /// Ends the stream after a final answer: a stream whose answer did not finish is reset.
    pub(super) fn close(&mut self) {
        if !self.ended {
            match self.send.as_mut() {
                Some(s) => s.send_reset(h2::Reason::CANCEL),
                None => self.respond.send_reset(h2::Reason::CANCEL),
            }
            self.ended = true;
        }
    }
}

/// Writes the HTTP/1.1 head of an HTTP/2 request into `out`: request line, `host` from
/// `:authority` (RFC 9113 8.3.1), the fields (cookies joined as RFC 9113 8.2.3 says), and the
/// framing of its body: `content-length` when given, chunked when the body's length is not
/// known. Returns the declared length. The values are valid HTTP field values already (h2
/// refuses CR, LF and NUL), so nothing here can split the head.
fn encode_request_head(parts: &http::request::Parts, ended: bool, out: &mut Vec<u8>) -> Option<u64> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    // CONNECT (extended CONNECT for WebSocket included) names an authority, not a path: in
    // HTTP/1.1 form it meets the same refusal as an HTTP/1.1 CONNECT (400, named).
    let target = match (&parts.method, parts.uri.path_and_query()) {
        (&http::Method::CONNECT, _) => parts.uri.authority().map_or("", |a| a.as_str()),
        // RFC 9113 8.3.1: `:path` is a path (or `*`); an absolute URI there would let it name
        // another host than `:authority`. Written as it is, it is refused as any bad target.
        (_, p) => p.map_or("/", |p| p.as_str()),
    };
    let target = if target.starts_with('/') || target == "*" || parts.method == http::Method::CONNECT {
        target
    } else {
        "invalid-target"
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    if let Some(a) = authority.or_else(|| parts.headers.get(http::header::HOST).map(HeaderValue::as_bytes)) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    let mut length: Option<u64> = None;
    let mut cookies: Option<Vec<u8>> = None;
    for (name, value) in parts.headers.iter() {
        match name.as_str() {
            "host" | "te" | "expect" => continue,
            "content-length" => {
                length = std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.trim().parse().ok());
                continue;
            }
            "cookie" => {
                let c = cookies.get_or_insert_with(Vec::new);
                if !c.is_empty() {
                    c.extend_from_slice(b"; ");
                }
                c.extend_from_slice(value.as_bytes());
                continue;
            }
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = cookies {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(&c);
        out.extend_from_slice(b"\r\n");
    }
    match (length, ended) {
        (Some(n), _) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (None, true) => {}
        (None, false) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h2_request_becomes_the_http11_head_the_pipeline_reads() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://api.example.com/v1/items?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-id", "7")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        assert_eq!(encode_request_head(&parts, false, &mut out), None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/items?x=1 HTTP/1.1\r\nhost: api.example.com\r\nx-id: 7\r\ncookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let req = http::Request::builder().method("CONNECT").uri("ws.example:443").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_request_head(&parts, true, &mut out);
        assert!(out.starts_with(b"CONNECT ws.example:443 HTTP/1.1\r\n"), "the authority form, refused downstream");
        let req = http::Request::builder().uri("http://h/").header("content-length", "3").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        assert_eq!(encode_request_head(&parts, false, &mut out), Some(3));
        assert!(String::from_utf8(out).unwrap().ends_with("host: h\r\ncontent-length: 3\r\n\r\n"));
    }
}
