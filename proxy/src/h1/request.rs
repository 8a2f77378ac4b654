//! The HTTP/1 request head: parsed, checked and read for what the proxy needs, sans I/O.
//!
//! Hot path: runs once per request; allocation-free (the header fields stay in the caller's
//! storage and borrow the receive buffer).

use super::framing::{accepted_codings, FramingError, FramingFields, Side};
use super::head::{check_raw_head, classify, BodyKind, ConnectionOptions, HeadError, Known};

/// A request head as HTTP/1 framed it.
#[derive(Debug)]
pub struct Request<'h> {
    pub method: &'h str,
    /// The request target as sent (origin, absolute, authority or asterisk form).
    pub target: &'h str,
    pub http10: bool,
    pub headers: &'h mut [httparse::Header<'h>],
    /// The one `Host` value (none only in an HTTP/1.0 request).
    pub host: Option<&'h [u8]>,
    pub body: BodyKind,
    /// The connection may carry another request after this one (as far as the client said).
    pub keep_alive: bool,
    /// The fields `Connection` names (hop-by-hop).
    pub connection: ConnectionOptions<'h>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Transfer codings the client accepts besides chunked (`TE`), as bits.
    pub te_accepts: u8,
    /// The client's `X-Request-Id`, as sent.
    pub request_id: Option<&'h [u8]>,
    /// An HTTP/1.1 GET with `Connection: upgrade` and `Upgrade: websocket`.
    pub upgrade_websocket: bool,
}

/// A refused head, with what is known of the request for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub error: HeadError,
    /// The request was a HEAD (its answer has no body).
    pub is_head: bool,
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (or white space before the colon, or obs-fold)",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

impl From<FramingError> for HeadError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::Bad(m) => HeadError::Bad(m),
            FramingError::Unsupported(m) => HeadError::NotImplemented(m),
        }
    }
}

/// Parses the complete head `head` (through its empty line) into `storage`; at most
/// `max_headers` fields.
pub fn parse<'h>(
    head: &'h [u8],
    storage: &'h mut [httparse::Header<'h>],
    max_headers: usize,
) -> Result<Request<'h>, Refused> {
    let refuse = |error, is_head| Err(Refused { error, is_head });
    let mut req = httparse::Request::new(storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return refuse(HeadError::Bad("incomplete request head"), false),
        Err(httparse::Error::TooManyHeaders) => return refuse(HeadError::TooManyHeaders, false),
        Err(e) => return refuse(HeadError::Bad(describe(e)), false),
    }
    let method = req.method.unwrap_or("");
    let is_head = method == "HEAD";
    if let Err(e) = check_raw_head(head) {
        return refuse(e, is_head);
    }
    let headers = req.headers;
    if headers.len() > max_headers {
        return refuse(HeadError::TooManyHeaders, is_head);
    }
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return refuse(HeadError::Version, is_head),
    };
    let mut r = Request {
        method,
        target: req.path.unwrap_or(""),
        http10,
        host: None,
        body: BodyKind::None,
        keep_alive: false,
        connection: ConnectionOptions::default(),
        expect_continue: false,
        te_accepts: 0,
        request_id: None,
        upgrade_websocket: false,
        headers: &mut [],
    };
    let mut hosts = 0;
    let mut framing = FramingFields::default();
    for h in headers.iter() {
        if h.name.as_bytes().contains(&b'_') {
            return refuse(HeadError::Bad("'_' in a header name"), is_head);
        }
        let step = match classify(h.name) {
            Known::Host => {
                hosts += 1;
                r.host = Some(h.value);
                Ok(())
            }
            Known::ContentLength => framing.content_length(h.value, Side::Request).map_err(HeadError::from),
            Known::TransferEncoding => framing.transfer_encoding(h.value).map_err(HeadError::from),
            Known::Connection => r.connection.add(h.value),
            Known::Expect if h.value.eq_ignore_ascii_case(b"100-continue") => {
                r.expect_continue = true;
                Ok(())
            }
            Known::Expect => Err(HeadError::Expectation),
            Known::RequestId => {
                r.request_id = Some(h.value);
                Ok(())
            }
            // `TE`: the transfer codings the client accepts besides chunked.
            Known::HopByHop if h.name.len() == 2 => {
                r.te_accepts |= accepted_codings(h.value);
                Ok(())
            }
            Known::HopByHop | Known::Forwarded | Known::Other => Ok(()),
        };
        if let Err(e) = step {
            return refuse(e, is_head);
        }
    }
    r.body = match framing.framing(Side::Request, http10) {
        Ok(f) => f.body,
        Err(e) => return refuse(e.into(), is_head),
    };
    if hosts > 1 || (hosts == 0 && !http10) {
        return refuse(HeadError::Bad("a request needs exactly one Host header"), is_head);
    }
    let c = &r.connection;
    r.keep_alive = if http10 { c.keep_alive && !c.close } else { !c.close };
    // Only looked for when `Connection` names the upgrade (rare): no cost to other requests.
    r.upgrade_websocket = !http10
        && method == "GET"
        && c.lists("upgrade")
        && headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade")
                && h.value.split(|b| *b == b',').any(|t| super::head::trim(t).eq_ignore_ascii_case(b"websocket"))
        });
    r.headers = headers;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Result<(String, BodyKind, bool), Refused> {
        let mut storage = [httparse::EMPTY_HEADER; 32];
        parse(head.as_bytes(), &mut storage, 32).map(|r| (r.method.to_string(), r.body, r.keep_alive))
    }

    #[test]
    fn heads_and_their_framing() {
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(), ("GET".into(), BodyKind::None, true));
        assert_eq!(parsed("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n").unwrap().1, BodyKind::Length(3));
        assert!(!parsed("GET / HTTP/1.0\r\n\r\n").unwrap().2);
        assert!(parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().2);
        let refused = |h: &str| parsed(h).unwrap_err();
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n").error, HeadError::Bad("a request needs exactly one Host header"));
        assert!(refused("HEAD / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\n\r\n").is_head);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nExpect: nothing\r\n\r\n").error, HeadError::Expectation);
        assert_eq!(refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n").error.status(), 501);
        assert_eq!(refused("GET / HTTP/2.0\r\nHost: a\r\n\r\n").error.status(), 400);
    }
}
