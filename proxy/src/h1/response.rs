//! The HTTP/1 response head from an upstream: parsed, checked and framed, sans I/O.
//!
//! Hot path: runs once per upstream response; allocation-free.

use super::framing::{FramingError, FramingFields, Side};
use super::head::{check_raw_head, classify, BodyKind, ConnectionOptions, Known};

/// A response head as HTTP/1 framed it.
#[derive(Debug)]
pub struct Response<'h> {
    pub status: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: &'h str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'h>],
    pub body: BodyKind,
    /// Transfer codings applied before the chunked framing (they go on to the client).
    pub codings: &'h [u8],
    /// The upstream connection may carry another request after this response's body.
    pub keep_alive: bool,
    /// The fields `Connection` names (hop-by-hop).
    pub connection: ConnectionOptions<'h>,
    /// The response has no body whatever its fields say (to a HEAD, or a 204 or 304).
    pub no_body: bool,
}

/// Why an upstream's response head was refused (the client gets a 502).
pub type Malformed = &'static str;

/// Parses the complete head `head` into `storage`. `request_was_head`: the request was a HEAD
/// (so the response has no body).
pub fn parse<'h>(
    head: &'h [u8],
    storage: &'h mut [httparse::Header<'h>],
    request_was_head: bool,
) -> Result<Response<'h>, Malformed> {
    let mut resp = httparse::Response::new(storage);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete response head"),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("unparseable response head"),
    }
    check_raw_head(head).map_err(|_| "bare CR, LF or NUL in response head")?;
    let status = resp.code.unwrap_or(0);
    if !(200..=999).contains(&status) {
        return Err("invalid status code");
    }
    let http10 = resp.version == Some(0);
    let reason = resp.reason.unwrap_or("");
    let headers = resp.headers;
    let mut connection = ConnectionOptions::default();
    let mut framing = FramingFields::default();
    let bad = |e: FramingError| match e {
        FramingError::Bad(m) | FramingError::Unsupported(m) => m,
    };
    for h in headers.iter() {
        match classify(h.name) {
            Known::ContentLength => framing.content_length(h.value, Side::Response).map_err(bad)?,
            Known::TransferEncoding => framing.transfer_encoding(h.value).map_err(bad)?,
            Known::Connection => connection.add(h.value).map_err(|_| "malformed Connection header")?,
            _ => {}
        }
    }
    let no_body = request_was_head || status == 204 || status == 304;
    // The framing of a body-less answer describes the resource, not this message.
    let (body, codings, has_te) = if no_body {
        (BodyKind::None, &b""[..], false)
    } else {
        let f = framing.framing(Side::Response, http10).map_err(bad)?;
        (f.body, f.codings, f.has_transfer_encoding)
    };
    let keep_alive = if http10 { connection.keep_alive && !connection.close } else { !connection.close }
        && (!has_te || matches!(body, BodyKind::Chunked | BodyKind::None));
    Ok(Response { status, reason, http10, headers, body, codings, keep_alive, connection, no_body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str, was_head: bool) -> Result<(u16, BodyKind, bool), Malformed> {
        let mut storage = [httparse::EMPTY_HEADER; 32];
        parse(head.as_bytes(), &mut storage, was_head).map(|r| (r.status, r.body, r.keep_alive))
    }

    #[test]
    fn response_framing() {
        assert_eq!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", false), Ok((200, BodyKind::Length(4), true)));
        assert_eq!(parsed("HTTP/1.1 200 OK\r\n\r\n", false), Ok((200, BodyKind::UntilClose, true)));
        assert_eq!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", true), Ok((200, BodyKind::None, true)));
        assert_eq!(parsed("HTTP/1.1 304 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).unwrap().1, BodyKind::None);
        // A body that runs until close cannot leave the connection reusable.
        assert!(!parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap().2);
        assert!(!parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap().2);
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(parsed("HTTP/1.1 099 Odd\r\n\r\n", false).is_err());
    }
}
