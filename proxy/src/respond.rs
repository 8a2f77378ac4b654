//! The one place where errors become responses and decide a connection's fate: what went
//! wrong ([`ProxyError`]), where and in which phase ([`Failure`]), the answer ("caused by X ->
//! answer Y"), whether the client connection is kept ([`fate`]), and the writing of replies
//! the proxy produces itself.

use ringway_policy::{HeaderList, Layered, Reply, ResponseExtras, ResponseInfo};

use crate::h1::chunked::ChunkError;
use crate::h1::head::HeadError;
use crate::h1::write::{push_dec, push_header, push_status_line, reason};

/// Everything that can end a request before an upstream answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Head(HeadError),
    #[error("no route matches this request")]
    NoRoute,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("malformed chunked request body: {0}")]
    BadRequestBody(ChunkError),
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("no upstream target available")]
    NoTarget,
    #[error("upstream connection failed")]
    UpstreamConnect,
    #[error("upstream did not accept the connection in time")]
    UpstreamConnectTimeout,
    #[error("upstream closed the connection or failed while the request was sent")]
    UpstreamSend,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream sent a malformed response: {0}")]
    UpstreamProtocol(&'static str),
}

impl ProxyError {
    /// Status and machine-readable code of the answer.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ProxyError::Head(h) => (h.status(), h.code()),
            ProxyError::NoRoute => (404, "no_route"),
            ProxyError::BodyTooLarge { .. } => (413, "request_body_too_large"),
            ProxyError::BadRequestBody(_) => (400, "bad_request_body"),
            ProxyError::RequestTimeout => (408, "request_timeout"),
            ProxyError::NoTarget => (503, "no_upstream_target"),
            ProxyError::UpstreamConnect => (502, "upstream_unreachable"),
            ProxyError::UpstreamConnectTimeout => (502, "upstream_connect_timeout"),
            ProxyError::UpstreamSend => (502, "upstream_send_failed"),
            ProxyError::UpstreamTimeout => (504, "upstream_timeout"),
            ProxyError::UpstreamProtocol(_) => (502, "bad_upstream_response"),
        }
    }

    pub fn reply(&self) -> Reply {
        let (status, code) = self.status_and_code();
        Reply::json_error(status, code, &self.to_string())
    }

    /// Who caused it.
    pub fn source(&self) -> Source {
        match self {
            ProxyError::Head(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::RequestTimeout => Source::Client,
            ProxyError::NoRoute | ProxyError::NoTarget => Source::Gateway,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamSend
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamProtocol(_) => Source::Upstream,
        }
    }

    /// Whether it is a deadline that ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProxyError::RequestTimeout | ProxyError::UpstreamTimeout | ProxyError::UpstreamConnectTimeout)
    }
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    /// The gateway's own configuration or state (no route, no target).
    Gateway,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Gateway => "gateway",
        }
    }
}

/// The phases of a request, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and checking the request head.
    Head,
    Route,
    /// The request policies.
    Policy,
    Cache,
    /// Picking an upstream target.
    Pick,
    /// Reading the request body from the client.
    RequestBody,
    Connect,
    /// Sending the request (head and body) upstream.
    Send,
    /// Waiting for and reading the upstream's response head.
    ResponseHead,
    /// Relaying the upstream's response body.
    ResponseBody,
    /// Writing to the client.
    Write,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Head => "head",
            Phase::Route => "route",
            Phase::Policy => "policy",
            Phase::Cache => "cache",
            Phase::Pick => "pick",
            Phase::RequestBody => "request_body",
            Phase::Connect => "connect",
            Phase::Send => "send",
            Phase::ResponseHead => "response_head",
            Phase::ResponseBody => "response_body",
            Phase::Write => "write",
        }
    }
}

/// An error with where it happened: the phase, the upstream target when there is one, and
/// whether trying the request again (elsewhere or on a fresh connection) is safe: nothing of it
/// reached the upstream's application, or it is idempotent and whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub error: ProxyError,
    pub phase: Phase,
    pub target: Option<std::net::SocketAddr>,
    pub retry_safe: bool,
}

impl Failure {
    pub fn new(error: ProxyError, phase: Phase) -> Failure {
        Failure { error, phase, target: None, retry_safe: false }
    }

    /// At upstream target `target`.
    pub fn at(error: ProxyError, phase: Phase, target: std::net::SocketAddr, retry_safe: bool) -> Failure {
        Failure { error, phase, target: Some(target), retry_safe }
    }

    pub fn source(&self) -> Source {
        self.error.source()
    }
}

/// What happens to a client connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Read the next request.
    Keep,
    /// Close once the answer is sent (lingering so the client reads it).
    Close,
}

/// The fate of a client connection after the gateway answered on its own (with `error`, or
/// with a policy's or the cache's answer when `None`). Kept only when the client wants it, the
/// request body was read to its end, the gateway is not draining, and the error leaves the
/// connection's framing intact: a head or body the gateway could not read, or a request cut
/// short by an upstream, closes it.
pub fn fate(error: Option<&Failure>, client_keep_alive: bool, body_read: bool, draining: bool) -> Fate {
    let framing_intact = match error.map(|f| f.error) {
        None | Some(ProxyError::NoRoute) | Some(ProxyError::NoTarget) => true,
        Some(_) => false,
    };
    if client_keep_alive && body_read && !draining && framing_intact {
        Fate::Keep
    } else {
        Fate::Close
    }
}

/// Appends the numeric headers policies asked for.
pub fn push_extras(out: &mut Vec<u8>, extras: Option<&ResponseExtras>) {
    let mut buf = [0u8; 20];
    // Policies often send one value under two names in a row: format it once.
    let mut last: Option<(u64, usize)> = None;
    for (name, value) in extras.into_iter().flat_map(ResponseExtras::iter) {
        let start = match last {
            Some((v, start)) if v == value => start,
            _ => {
                let start = buf.len() - crate::h1::write::format_dec(value, &mut buf).len();
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

/// Serialises a stored response: its status and headers (through the route's response
/// policies), `Age`, the request id, the policies' headers, and the body unless `head_only`.
#[allow(clippy::too_many_arguments)]
pub fn encode_cached(
    out: &mut Vec<u8>,
    stored: &crate::cache::Stored,
    now_ms: u64,
    request_id: &[u8],
    close: bool,
    head_only: bool,
    chain: Layered<'_>,
    extras: Option<&ResponseExtras>,
    spares: &crate::spares::Spares,
) {
    let mut headers = spares.headers();
    for (n, v) in &stored.headers {
        headers.push(&**n, &**v);
    }
    let whole = Whole { status: stored.status, body: &stored.body, age: Some(stored.age(now_ms)) };
    encode_whole(out, &mut headers, whole, request_id, (close, head_only), Some(chain), extras);
    spares.give_headers(headers);
}

/// A response whose body is in memory.
struct Whole<'b> {
    status: u16,
    body: &'b [u8],
    /// `Age`, for stored responses.
    age: Option<u64>,
}

/// The part of every in-memory answer: request id, response policies, status line and
/// headers, the policies' headers, framing, and the body unless `head_only`.
fn encode_whole<'h>(
    out: &mut Vec<u8>,
    headers: &mut HeaderList<'h>,
    w: Whole<'_>,
    request_id: &'h [u8],
    (close, head_only): (bool, bool),
    chain: Option<Layered<'h>>,
    extras: Option<&ResponseExtras>,
) {
    headers.set("x-request-id", request_id);
    if let Some(c) = chain {
        c.on_response(&ResponseInfo { status: w.status }, headers);
    }
    push_status_line(out, w.status, reason(w.status));
    for h in headers.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    if let Some(age) = w.age {
        out.extend_from_slice(b"age: ");
        push_dec(out, age);
        out.extend_from_slice(b"\r\n");
    }
    push_extras(out, extras);
    if w.status != 204 {
        out.extend_from_slice(b"content-length: ");
        push_dec(out, w.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(w.body);
    }
}

/// Serialises a reply the proxy produced (policy verdict or error) into `out`, running the
/// route's response policies when there is a route.
pub fn encode_reply(
    out: &mut Vec<u8>,
    reply: &Reply,
    request_id: &[u8],
    close: bool,
    head_only: bool,
    chain: Option<Layered<'_>>,
    extras: Option<&ResponseExtras>,
) {
    let mut headers = HeaderList::with_capacity(reply.headers.len() + 2);
    for (n, v) in &reply.headers {
        headers.push(n.as_str(), v.as_bytes());
    }
    let whole = Whole { status: reply.status, body: &reply.body, age: None };
    encode_whole(out, &mut headers, whole, request_id, (close, head_only), chain, extras);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_kept_only_when_its_framing_is_intact() {
        let no_route = Failure::new(ProxyError::NoRoute, Phase::Route);
        let bad_head = Failure::new(ProxyError::Head(HeadError::Bad("x")), Phase::Head);
        let too_large = Failure::new(ProxyError::BodyTooLarge { limit: 1 }, Phase::Head);
        let unreachable = Failure::at(ProxyError::UpstreamConnect, Phase::Connect, ([127, 0, 0, 1], 1).into(), true);
        assert_eq!(fate(None, true, true, false), Fate::Keep);
        assert_eq!(fate(Some(&no_route), true, true, false), Fate::Keep);
        assert_eq!(fate(Some(&no_route), true, false, false), Fate::Close, "the body was not read");
        assert_eq!(fate(Some(&no_route), false, true, false), Fate::Close, "the client asked to close");
        assert_eq!(fate(Some(&no_route), true, true, true), Fate::Close, "draining");
        for f in [bad_head, too_large, unreachable] {
            assert_eq!(fate(Some(&f), true, true, false), Fate::Close, "{f:?}");
        }
        assert_eq!(unreachable.source(), Source::Upstream);
        assert_eq!(bad_head.source(), Source::Client);
        assert_eq!(no_route.source(), Source::Gateway);
    }
}
