//! The request record: what every request leaves behind when it ends, in fixed fields filled
//! as the request goes, and handed once to the metrics and the access log (see
//! [`crate::forward::finish`]).
//!
//! Hot path: no allocation per request (the text fields reuse the connection's buffer).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use monoio::time::Instant;

use crate::respond::{Failure, Phase, Source};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum End {
    /// The whole response reached the client.
    #[default]
    Completed,
    /// The client went away (or stopped reading) before the response was complete.
    ClientAbort,
    /// The upstream failed after its answer began, so the response was cut short.
    UpstreamReset,
    /// A deadline ran out (client or upstream); `error` names which.
    Timeout,
    /// A policy answered (authentication, limits, ...).
    Policy,
    /// The gateway answered with an error of its own; `error` names it.
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::ClientAbort => "client_abort",
            End::UpstreamReset => "upstream_reset",
            End::Timeout => "timeout",
            End::Policy => "policy",
            End::Error => "error",
        }
    }
}

/// What the response cache did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// The route has no cache.
    #[default]
    None,
    Hit,
    Miss,
    /// A stored response was past its freshness: fetched again.
    Expired,
    /// Not cacheable (method, body, or the client's `no-store`/`no-cache`).
    Bypass,
    /// A stale stored response answered because the upstream failed (`stale-if-error`).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            CacheStatus::None => None,
            CacheStatus::Hit => Some("hit"),
            CacheStatus::Miss => Some("miss"),
            CacheStatus::Expired => Some("expired"),
            CacheStatus::Bypass => Some("bypass"),
            CacheStatus::Stale => Some("stale"),
        }
    }
}

/// Which limit refused a request, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitOutcome {
    #[default]
    Passed,
    RateLimited,
    ConcurrencyLimited,
}

/// Methods counted by name; every other method counts as `OTHER`.
pub const METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"];

/// Index of `m` in [`METHODS`].
pub fn method_index(m: &str) -> u8 {
    match m {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "PATCH" => 5,
        "OPTIONS" => 6,
        "CONNECT" => 7,
        "TRACE" => 8,
        _ => 9,
    }
}

/// A request id: the client's (when sane) or a generated one.
#[derive(Debug, Clone, Copy)]
pub struct RequestId {
    buf: [u8; 64],
    len: u8,
}

impl RequestId {
    pub fn generated(id: [u8; 32]) -> Self {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(&id);
        RequestId { buf, len: 32 }
    }

    pub fn from_client(v: &[u8]) -> Option<Self> {
        if v.is_empty()
            || v.len() > 64
            || !v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return None;
        }
        let mut buf = [0u8; 64];
        buf[..v.len()].copy_from_slice(v);
        Some(RequestId { buf, len: v.len() as u8 })
    }

    /// An id queued for the access log (from [`RequestId::as_bytes`]: 64 bytes at most).
    pub(crate) fn queued(v: &[u8]) -> Self {
        let mut buf = [0u8; 64];
        let len = v.len().min(64);
        buf[..len].copy_from_slice(&v[..len]);
        RequestId { buf, len: len as u8 }
    }

    /// No id yet.
    pub fn empty() -> Self {
        RequestId { buf: [0; 64], len: 0 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// A W3C trace context: the trace this request belongs to and the gateway's own span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The span id the gateway passes upstream as the parent (its first attempt's client
    /// span when the request is sampled).
    pub span_id: [u8; 8],
    pub flags: u8,
    /// The client's span, when the trace came with the request (else zero).
    pub parent_id: [u8; 8],
    /// The gateway's server span, when the request is sampled (else zero).
    pub server_id: [u8; 8],
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

impl Trace {
    /// The trace of an inbound `traceparent` value (W3C Trace Context, level 1), when valid:
    /// version `00` (or a later version, read as far as version 00 goes), a trace id and a
    /// parent id that are lower-case hex and not all zero. The span id is left for the caller.
    pub fn from_traceparent(v: &[u8]) -> Option<Trace> {
        let v = v.trim_ascii();
        if v.len() < 55 {
            return None;
        }
        let version: [u8; 1] = parse_hex(&v[..2])?;
        if version[0] == 0xff
            || (version[0] == 0 && v.len() != 55)
            || (version[0] != 0 && v.len() > 55 && v[55] != b'-')
        {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = parse_hex(&v[3..35])?;
        let parent: [u8; 8] = parse_hex(&v[36..52])?;
        let flags: [u8; 1] = parse_hex(&v[53..55])?;
        if trace_id == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(Trace { trace_id, span_id: [0; 8], flags: flags[0], parent_id: parent, server_id: [0; 8] })
    }

    /// The `traceparent` value that names the gateway's span as the parent.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        hex_into(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        hex_into(&mut out[53..55], &[self.flags]);
        out
    }
}

/// Writes `bytes` as lower-case hex at the start of `out`.
pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 15) as usize];
    }
}

/// A small fast generator for ids (splitmix64): unique and unpredictable enough for trace and
/// span ids, which are not secrets.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The request text the access log needs, copied out of the receive buffer (which the next
/// request reuses) into one buffer the connection keeps: method, host and path.
#[derive(Debug, Default)]
pub struct RequestText {
    pub buf: Vec<u8>,
    method: usize,
    host: usize,
}

impl RequestText {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.method = 0;
        self.host = 0;
    }

    pub fn set(&mut self, method: &str, host: &[u8], path: &str, query: Option<&str>) {
        self.buf.clear();
        self.buf.extend_from_slice(method.as_bytes());
        self.method = self.buf.len();
        self.buf.extend_from_slice(host);
        self.host = self.buf.len();
        self.buf.extend_from_slice(path.as_bytes());
        if let Some(q) = query {
            self.buf.push(b'?');
            self.buf.extend_from_slice(q.as_bytes());
        }
    }

    /// Method, host and path; `None` before the request head was understood.
    pub fn parts(&self) -> Option<(&[u8], &[u8], &[u8])> {
        (self.method > 0).then(|| (&self.buf[..self.method], &self.buf[self.method..self.host], &self.buf[self.host..]))
    }
}

/// The fields of one request that outlive its planning: filled as the request goes, read once
/// at its end. Reset for every request of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When the request began: its first byte, or the end of the previous request for a
    /// pipelined one.
    pub started: Instant,
    pub request_id: RequestId,
    pub trace: Trace,
    /// Whether `trace` came from the client (else it was made here).
    pub trace_inbound: bool,
    pub method: u8,
    /// The request came as HTTP/1.0.
    pub http10: bool,
    pub client_ip: IpAddr,
    /// The status sent to the client (0: none was sent).
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent (as content, before any chunked framing).
    pub bytes_out: u64,
    /// When the first attempt on the upstream began.
    pub upstream_started: Option<Instant>,
    /// Time to connect to the upstream (None when no new connection was made).
    pub upstream_connect: Option<Duration>,
    /// From the first attempt to the upstream's response head.
    pub upstream_head: Option<Duration>,
    /// From the first attempt to the last byte of the upstream's response.
    pub upstream_last: Option<Duration>,
    pub cache: CacheStatus,
    pub limit: LimitOutcome,
    pub attempts: u8,
    /// Events on the chosen upstream target, for its metrics.
    pub connects: u8,
    pub connect_errors: u8,
    pub timeouts: u8,
    pub reuses: u8,
    /// A retry was wanted but the retry budget had none left.
    pub budget_exhausted: bool,
    pub end: End,
    /// The error code of the gateway's own answer, or of what cut the request short.
    pub error: Option<&'static str>,
    /// Who caused the error, and in which phase.
    pub error_source: Option<Source>,
    pub error_phase: Option<Phase>,
    /// The authenticated consumer's slot in the request's snapshot.
    pub consumer: Option<u32>,
}

impl Record {
    pub fn new(started: Instant) -> Record {
        Record {
            started,
            request_id: RequestId::empty(),
            trace: Trace::default(),
            trace_inbound: false,
            method: 9,
            http10: false,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_started: None,
            upstream_connect: None,
            upstream_head: None,
            upstream_last: None,
            cache: CacheStatus::None,
            limit: LimitOutcome::Passed,
            attempts: 0,
            connects: 0,
            connect_errors: 0,
            timeouts: 0,
            reuses: 0,
            budget_exhausted: false,
            end: End::Completed,
            error: None,
            error_source: None,
            error_phase: None,
            consumer: None,
        }
    }

    /// The gateway answered with `e`: its status, code and the kind of end.
    pub fn failed(&mut self, f: &Failure) {
        let (status, code) = f.error.status_and_code();
        self.status = status;
        self.error = Some(code);
        self.error_source = Some(f.source());
        self.error_phase = Some(f.phase);
        self.end = if f.error.is_timeout() { End::Timeout } else { End::Error };
    }

    /// An answer written whole (the gateway's own, a policy's, a stored one) did not reach the
    /// client: nothing was sent (status 0), whatever the answer was; its error code is kept.
    pub fn unsent(&mut self) {
        self.status = 0;
        self.bytes_out = 0;
        self.end = End::ClientAbort;
        self.error = Some(self.error.unwrap_or("client_write_failed"));
        self.error_source = Some(Source::Client);
        self.error_phase = Some(Phase::Write);
    }

    /// The request ended early without an answer of the gateway's own (a failed read or write).
    pub fn cut(&mut self, end: End, code: &'static str) {
        // The first cause is the one that counts.
        if matches!(self.end, End::Completed) {
            self.end = end;
            self.error = Some(code);
            let (source, phase) = match end {
                End::ClientAbort if code == "client_closed" => (Source::Client, Phase::RequestBody),
                End::ClientAbort => (Source::Client, Phase::Write),
                _ => (Source::Upstream, Phase::ResponseBody),
            };
            self.error_source = Some(source);
            self.error_phase = Some(phase);
        }
    }
}
