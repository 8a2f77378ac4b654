//! Strict parsing of HTTP/1.1 message heads on top of `httparse`, with the checks an edge
//! proxy needs that `httparse` leaves to its caller (RFC 9112 framing, bare LF, NUL, `_` in
//! names, duplicated framing headers). The request target is read by [`super::path`].
//!
//! Hot path: runs once per request and once per upstream response; allocation-free.

/// Most header fields parsed in a head; `ServerLimits::max_headers` may set a lower cap.
pub const MAX_HEADERS: usize = 128;

/// How a message body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

/// Why a head was refused, and how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    TooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("{0}")]
    Bad(&'static str),
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("HTTP version not supported")]
    Version,
    #[error("expectation not supported")]
    Expectation,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Bad(_) => 400,
            HeadError::NotImplemented(_) => 501,
            HeadError::Version => 505,
            HeadError::Expectation => 417,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => "request_header_fields_too_large",
            HeadError::Bad(_) => "bad_request",
            HeadError::NotImplemented(_) => "not_implemented",
            HeadError::Version => "http_version_not_supported",
            HeadError::Expectation => "expectation_failed",
        }
    }
}

/// Classes of header names the proxy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop fields removed in both directions.
    HopByHop,
    Expect,
    RequestId,
    /// `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `X-Client-IP` and the client-address
    /// headers of CDNs and balancers: claims about the client; never passed upstream as sent
    /// (the proxy sets its own `X-Forwarded-For`, `-Proto` and `-Host`).
    Forwarded,
}

/// Classifies a header name (ASCII case-insensitive).
pub fn classify(name: &str) -> Known {
    let eq = |s: &str| name.eq_ignore_ascii_case(s);
    // Length and first letter rule out almost every other field before any comparison.
    let first = name.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
    match (name.len(), first) {
        (2, b't') if eq("te") => Known::HopByHop,
        (4, b'h') if eq("host") => Known::Host,
        (6, b'e') if eq("expect") => Known::Expect,
        (7, b'u') if eq("upgrade") => Known::HopByHop,
        (9, b'f') if eq("forwarded") => Known::Forwarded,
        (9, b'x') if eq("x-real-ip") => Known::Forwarded,
        (10, b'c') if eq("connection") => Known::Connection,
        (10, b'k') if eq("keep-alive") => Known::HopByHop,
        (11, b'x') if eq("x-client-ip") => Known::Forwarded,
        (12, b'x') if eq("x-request-id") => Known::RequestId,
        (14, b'c') if eq("content-length") => Known::ContentLength,
        (14, b't') if eq("true-client-ip") => Known::Forwarded,
        (15, b'x') if eq("x-forwarded-for") => Known::Forwarded,
        (16, b'p') if eq("proxy-connection") => Known::HopByHop,
        (16, b'c') if eq("cf-connecting-ip") => Known::Forwarded,
        (16, b'f') if eq("fastly-client-ip") => Known::Forwarded,
        (16, b'x') if eq("x-forwarded-host") => Known::Forwarded,
        (17, b't') if eq("transfer-encoding") => Known::TransferEncoding,
        (17, b'x') if eq("x-forwarded-proto") => Known::Forwarded,
        (19, b'x') if eq("x-cluster-client-ip") => Known::Forwarded,
        // Every other `X-Forwarded-*` (port, prefix, server...).
        (13.., b'x') if name.as_bytes()[..12].eq_ignore_ascii_case(b"x-forwarded-") => Known::Forwarded,
        _ => Known::Other,
    }
}

/// Checks the raw head bytes for what `httparse` tolerates: bare LF, bare CR and NUL.
pub fn check_raw_head(head: &[u8]) -> Result<(), HeadError> {
    check_bytes(head, false)
}

/// [`check_raw_head`] for the start of a head still arriving: a CR as the last byte passes,
/// since its LF may be in the next read.
pub fn check_partial_head(buf: &[u8]) -> Result<(), HeadError> {
    check_bytes(buf, true)
}

/// A few vectorised passes instead of a search per line end: every LF must follow a CR, and
/// then a CR count equal to the LF count means no CR stands alone.
fn check_bytes(head: &[u8], partial: bool) -> Result<(), HeadError> {
    if memchr::memchr(0, head).is_some() {
        return Err(HeadError::Bad("NUL in message head"));
    }
    let mut lfs = 0;
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return Err(HeadError::Bad("bare LF in message head"));
        }
        lfs += 1;
    }
    let crs = memchr::memchr_iter(b'\r', head).count();
    let trailing = usize::from(partial && head.last() == Some(&b'\r'));
    if crs != lfs + trailing {
        return Err(HeadError::Bad("bare CR in message head"));
    }
    Ok(())
}

/// Parses a Content-Length value: 1*DIGIT, no sign, no list, no overflow.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Names removed because a `Connection` header lists them (at most 8).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionOptions<'b> {
    pub close: bool,
    pub keep_alive: bool,
    names: [&'b [u8]; 8],
    count: usize,
}

impl<'b> ConnectionOptions<'b> {
    /// Adds the tokens of one `Connection` header value.
    pub fn add(&mut self, value: &'b [u8]) -> Result<(), HeadError> {
        for tok in value.split(|b| *b == b',') {
            let tok = trim(tok);
            if tok.is_empty() {
                continue;
            }
            if tok.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                if self.count == self.names.len() {
                    return Err(HeadError::Bad("too many Connection options"));
                }
                self.names[self.count] = tok;
                self.count += 1;
            }
        }
        Ok(())
    }

    /// Whether `name` is listed as a connection option (and so hop-by-hop).
    pub fn lists(&self, name: &str) -> bool {
        self.names[..self.count].iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Checks a Host value and returns it without its port: reg-name, IPv4 or `[IPv6]`.
pub fn host_without_port(v: &[u8]) -> Result<&str, HeadError> {
    let bad = HeadError::Bad("invalid Host header");
    if v.is_empty() || v.len() > 255 {
        return Err(bad);
    }
    let s = std::str::from_utf8(v).map_err(|_| bad)?;
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(bad)?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad),
        };
        (&s[..end + 2], port)
    } else {
        match s.rfind(':') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
    }
    let ok = if host.starts_with('[') {
        host.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'[' | b']'))
    } else {
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if ok {
        Ok(host)
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names_in_any_case() {
        let cases = [
            ("TE", Known::HopByHop),
            ("Host", Known::Host),
            ("EXPECT", Known::Expect),
            ("Upgrade", Known::HopByHop),
            ("Connection", Known::Connection),
            ("Keep-Alive", Known::HopByHop),
            ("X-Request-Id", Known::RequestId),
            ("Content-Length", Known::ContentLength),
            ("x-forwarded-for", Known::Forwarded),
            ("Proxy-Connection", Known::HopByHop),
            ("X-Forwarded-Host", Known::Forwarded),
            ("Transfer-Encoding", Known::TransferEncoding),
            ("X-Forwarded-Proto", Known::Forwarded),
            ("Forwarded", Known::Forwarded),
            ("x-real-ip", Known::Forwarded),
            ("X-Client-IP", Known::Forwarded),
            ("X-Forwarded-Port", Known::Forwarded),
            ("x-forwarded-prefix", Known::Forwarded),
            ("True-Client-IP", Known::Forwarded),
            ("CF-Connecting-IP", Known::Forwarded),
            ("Fastly-Client-IP", Known::Forwarded),
            ("X-Cluster-Client-IP", Known::Forwarded),
            ("X-Forwarded", Known::Other),
            ("Date", Known::Other),
            ("Content-Type", Known::Other),
            ("", Known::Other),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name}");
        }
    }

    #[test]
    fn content_length_grammar() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"0012"), Some(12));
        for bad in [&b""[..], b"+5", b"-1", b"1,1", b"0x10", b" 5", b"99999999999999999999", b"18446744073709551616"] {
            assert_eq!(parse_content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn raw_head_checks() {
        assert!(check_raw_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check_raw_head(b"GET / HTTP/1.1\nHost: a\r\n\r\n").is_err());
        assert!(check_raw_head(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n").is_err());
        assert!(check_raw_head(b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n").is_err());
        assert!(check_raw_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r").is_err());
        assert!(check_raw_head(b"\nGET / HTTP/1.1\r\n\r\n").is_err());
        // A head still arriving may end in the CR of a CRLF, and only there.
        assert!(check_partial_head(b"GET / HTTP/1.1\r\nHost: a\r").is_ok());
        assert!(check_partial_head(b"GET / HTTP/1.1\r\nHost: a\r\n").is_ok());
        assert!(check_partial_head(b"GET / HTTP/1.1\rHost: a\r").is_err());
        assert!(check_partial_head(b"GET / HTTP/1.1\nHost: a").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_without_port(b"Example.com:8080"), Ok("Example.com"));
        assert_eq!(host_without_port(b"[::1]:80"), Ok("[::1]"));
        assert_eq!(host_without_port(b"10.0.0.1"), Ok("10.0.0.1"));
        for bad in [&b""[..], b"a b", b"a:", b"a:x", b"[::1", b"a/b", b"a@b"] {
            assert!(host_without_port(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_options() {
        let mut c = ConnectionOptions::default();
        c.add(b"keep-alive, X-Secret ,Close").unwrap();
        assert!(c.close && c.keep_alive);
        assert!(c.lists("x-secret"));
        assert!(!c.lists("x-other"));
    }
}
