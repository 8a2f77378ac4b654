//! The one place where errors become responses and decide a connection's fate: what went
//! wrong ([`ProxyError`]), where and in which phase ([`Failure`]), the answer ("caused by X ->
//! answer Y"), and whether the client connection is kept ([`fate`]). The client's session
//! writes the reply ([`crate::session::Session::write_reply`]).

use ringway_policy::Reply;

use crate::h1::chunked::ChunkError;
use crate::h1::head::HeadError;

/// Everything that can end a request before an upstream answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Head(HeadError),
    #[error("no route matches this request")]
    NoRoute,
    #[error("this connection's certificate does not serve the requested host; open a connection for it")]
    Misdirected,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("malformed chunked request body: {0}")]
    BadRequestBody(ChunkError),
    #[error("request body does not match its content-length: {0}")]
    BodyLength(&'static str),
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("no upstream target available")]
    NoTarget,
    #[error("every target of the upstream is out of rotation (failing health checks)")]
    NoHealthyTarget,
    #[error("the upstream's circuit breaker is open: it failed too often; try again in {retry_after_s} s")]
    CircuitOpen { retry_after_s: u32 },
    #[error("upstream connection failed")]
    UpstreamConnect,
    #[error("upstream did not accept the connection in time")]
    UpstreamConnectTimeout,
    #[error("upstream closed the connection or failed while the request was sent")]
    UpstreamSend,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the TLS handshake with the upstream failed (its certificate was refused, or it refused ours)")]
    UpstreamTls,
    #[error("upstream sent a malformed response: {0}")]
    UpstreamProtocol(&'static str),
}

impl ProxyError {
    /// Status and machine-readable code of the answer.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ProxyError::Head(h) => (h.status(), h.code()),
            ProxyError::NoRoute => (404, "no_route"),
            ProxyError::Misdirected => (421, "misdirected_request"),
            ProxyError::BodyTooLarge { .. } => (413, "request_body_too_large"),
            ProxyError::BadRequestBody(_) | ProxyError::BodyLength(_) => (400, "bad_request_body"),
            ProxyError::RequestTimeout => (408, "request_timeout"),
            ProxyError::NoTarget => (503, "no_upstream_target"),
            ProxyError::NoHealthyTarget => (503, "no_healthy_target"),
            ProxyError::CircuitOpen { .. } => (503, "circuit_open"),
            ProxyError::UpstreamConnect => (502, "upstream_unreachable"),
            ProxyError::UpstreamConnectTimeout => (502, "upstream_connect_timeout"),
            ProxyError::UpstreamSend => (502, "upstream_send_failed"),
            ProxyError::UpstreamTls => (502, "upstream_tls_failed"),
            ProxyError::UpstreamTimeout => (504, "upstream_timeout"),
            ProxyError::UpstreamProtocol(_) => (502, "bad_upstream_response"),
        }
    }

    pub fn reply(&self) -> Reply {
        let (status, code) = self.status_and_code();
        let mut r = Reply::json_error(status, code, &self.to_string());
        if let ProxyError::CircuitOpen { retry_after_s } = self {
            r.headers.push(("retry-after".into(), retry_after_s.max(&1).to_string()));
        }
        r
    }

    /// Who caused it.
    pub fn source(&self) -> Source {
        match self {
            ProxyError::Head(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::BodyLength(_)
            | ProxyError::RequestTimeout => Source::Client,
            ProxyError::NoRoute
            | ProxyError::Misdirected
            | ProxyError::NoTarget
            | ProxyError::NoHealthyTarget
            | ProxyError::CircuitOpen { .. } => Source::Gateway,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamSend
            | ProxyError::UpstreamTls
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
        None | Some(ProxyError::NoRoute | ProxyError::NoTarget | ProxyError::NoHealthyTarget) => true,
        Some(ProxyError::CircuitOpen { .. }) => true,
        Some(_) => false,
    };
    if client_keep_alive && body_read && !draining && framing_intact {
        Fate::Keep
    } else {
        Fate::Close
    }
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
