//! The upstream side of an exchange: reading the response head (skipping interim 1xx answers)
//! and turning it into the head sent to the client, with framing checked as strictly as on the
//! request side.
//!
//! Hot path.

use monoio::net::TcpStream;
use monoio::time::Instant;
use ringway_policy::{Layered, ResponseExtras, ResponseInfo};

use crate::forward::MAX_HEADERS;
use crate::h1::head::{check_raw_head, classify, parse_content_length, BodyKind, ConnectionOptions, Known};
use crate::io::{push_dec, read_more};
use crate::respond::{push_header, push_status_line, ProxyError};
use crate::worker::Spares;

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Reads a final (non-1xx) response head into `buf` (after what `buf` already holds); returns
/// its length. With `stop_at_continue`, an interim answer (`100 Continue`) ends the read
/// instead: it is removed from `buf` (what followed it stays) and the length returned is 0. On failure also says
/// whether nothing at all was received (so a stale pooled connection may be retried).
pub async fn read_response(
    up: &mut TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
    stop_at_continue: bool,
) -> Result<(usize, Vec<u8>), (ProxyError, Vec<u8>, bool)> {
    let mut received = false;
    let mut scanned: usize = 0;
    loop {
        let from = scanned.saturating_sub(3);
        if let Some(i) = memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
            let head_len = from + i + 4;
            if buf.len() >= 12 && buf.starts_with(b"HTTP/1.") && buf[9] == b'1' {
                // An interim response: 101 is never asked for; others are dropped.
                if &buf[9..12] == b"101" {
                    return Err((ProxyError::UpstreamProtocol("unexpected 101 Switching Protocols"), buf, false));
                }
                buf.drain(..head_len);
                scanned = 0;
                if stop_at_continue {
                    // The origin spoke before the body: a 100 or another interim answer.
                    return Ok((0, buf));
                }
                continue;
            }
            return Ok((head_len, buf));
        }
        scanned = buf.len();
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err((ProxyError::UpstreamProtocol("response head too large"), buf, false));
        }
        let (r, b) = read_more(up, buf, 8 * 1024, deadline).await;
        buf = b;
        match r {
            Ok(0) => {
                let e = ProxyError::UpstreamProtocol("connection closed before a complete response head");
                return Err((e, buf, !received));
            }
            Ok(_) => received = true,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err((ProxyError::UpstreamTimeout, buf, false))
            }
            Err(_) => return Err((ProxyError::UpstreamSend, buf, !received)),
        }
    }
}

/// What the response head said about the rest of the exchange.
#[derive(Debug, Clone, Copy)]
pub struct ResponsePlan {
    pub head_len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// Whether the upstream connection may be reused after the body.
    pub keep_alive: bool,
}

/// How the client side is answered.
pub struct ClientSide<'a> {
    pub chain: Layered<'a>,
    pub request_id: &'a [u8],
    pub request_was_head: bool,
    pub http10: bool,
    /// Transfer codings the client accepts besides chunked (see [`accepted_codings`]).
    pub te_accepts: u8,
    /// Close after this response whatever its framing.
    pub close: bool,
    /// Where the header list comes from and goes back to.
    pub spares: &'a Spares,
    /// Headers the route's policies add to every answer.
    pub extras: Option<&'a ResponseExtras>,
}

impl ResponsePlan {
    /// Whether the body goes to the client with the chunked coding.
    pub fn chunked_to_client(&self, c: &ClientSide<'_>) -> bool {
        !c.http10 && matches!(self.body, BodyKind::Chunked | BodyKind::UntilClose)
    }

    /// Whether the client connection ends after this response.
    pub fn close_client(&self, c: &ClientSide<'_>) -> bool {
        c.close || (c.http10 && matches!(self.body, BodyKind::Chunked | BodyKind::UntilClose))
    }
}

/// Parses the response head `head`, checks its framing and writes the client's head into `out`.
pub fn encode_response(head: &[u8], out: &mut Vec<u8>, c: &ClientSide<'_>) -> Result<ResponsePlan, ProxyError> {
    let bad = ProxyError::UpstreamProtocol;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete response head")),
        Err(httparse::Error::TooManyHeaders) => return Err(bad("too many response header fields")),
        Err(_) => return Err(bad("unparseable response head")),
    }
    check_raw_head(head).map_err(|_| bad("bare CR, LF or NUL in response head"))?;
    let status = resp.code.unwrap_or(0);
    if !(200..=999).contains(&status) {
        return Err(bad("invalid status code"));
    }
    let http10 = resp.version == Some(0);
    let headers = resp.headers;
    let mut opts = ConnectionOptions::default();
    let mut cl: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for h in headers.iter() {
        match classify(h.name) {
            Known::ContentLength => {
                let n = parse_content_length(h.value).ok_or(bad("invalid Content-Length"))?;
                if cl.is_some_and(|prev| prev != n) {
                    return Err(bad("conflicting Content-Length values"));
                }
                cl = Some(n);
            }
            Known::TransferEncoding => {
                if te.is_some() {
                    return Err(bad("more than one Transfer-Encoding"));
                }
                te = Some(h.value);
            }
            Known::Connection => opts.add(h.value).map_err(|_| bad("malformed Connection header"))?,
            _ => {}
        }
    }
    let no_body = c.request_was_head || status == 204 || status == 304;
    // Transfer codings other than the chunked framing (`gzip, chunked`) go on to the client.
    let mut codings: &[u8] = b"";
    let body = if no_body {
        BodyKind::None
    } else {
        match (te, cl) {
            (Some(_), Some(_)) => return Err(bad("both Transfer-Encoding and Content-Length")),
            (Some(v), None) => {
                let (others, chunked) = split_codings(v)?;
                codings = others;
                if chunked {
                    BodyKind::Chunked
                } else {
                    BodyKind::UntilClose
                }
            }
            (None, Some(n)) => BodyKind::Length(n),
            (None, None) => BodyKind::UntilClose,
        }
    };
    if !codings.is_empty() {
        // Only to an HTTP/1.1 client that said (in `TE`) it accepts every one of them.
        let accepted = |t: &[u8]| coding_bit(t.trim_ascii()) & c.te_accepts != 0;
        if c.http10 || !codings.split(|b| *b == b',').all(accepted) {
            return Err(bad("a transfer coding the client did not accept"));
        }
    }
    let keep_alive = if http10 { opts.keep_alive && !opts.close } else { !opts.close }
        && te.is_none_or(|_| matches!(body, BodyKind::Chunked | BodyKind::None));
    let plan = ResponsePlan { head_len: head.len(), status, body, keep_alive };

    let mut list = c.spares.headers();
    for h in headers.iter() {
        match classify(h.name) {
            // Framing of a body-less answer (HEAD, 304) describes the resource: keep it.
            Known::ContentLength if no_body => list.push(h.name, h.value),
            Known::Other | Known::Host | Known::Expect | Known::Forwarded if !opts.lists(h.name) => {
                list.push(h.name, h.value)
            }
            _ => {}
        }
    }
    list.set("x-request-id", c.request_id);
    c.chain.on_response(&ResponseInfo { status }, &mut list);

    let reason = resp.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| crate::respond::reason(status));
    push_status_line(out, status, reason);
    for h in list.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    c.spares.give_headers(list);
    crate::respond::push_extras(out, c.extras);
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked | BodyKind::UntilClose if !c.http10 => {
            out.extend_from_slice(b"transfer-encoding: ");
            if !codings.is_empty() {
                out.extend_from_slice(codings);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(b"chunked\r\n")
        }
        _ => {}
    }
    if plan.close_client(c) {
        out.extend_from_slice(b"connection: close\r\n");
    } else if c.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(plan)
}

/// The transfer codings (besides chunked) a client's `TE` value accepts, as bits; a coding
/// with `q=0` is refused.
pub fn accepted_codings(v: &[u8]) -> u8 {
    v.split(|b| *b == b',').fold(0, |acc, item| {
        let mut parts = item.split(|b| *b == b';');
        let bit = coding_bit(parts.next().unwrap_or(b"").trim_ascii());
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            p.len() >= 2 && p[..2].eq_ignore_ascii_case(b"q=") && p[2..].iter().all(|b| matches!(b, b'0' | b'.'))
        });
        if refused {
            acc
        } else {
            acc | bit
        }
    })
}

/// The bit of a transfer coding name (0: one the proxy does not know).
fn coding_bit(name: &[u8]) -> u8 {
    if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
        1
    } else if name.eq_ignore_ascii_case(b"deflate") {
        2
    } else if name.eq_ignore_ascii_case(b"compress") || name.eq_ignore_ascii_case(b"x-compress") {
        4
    } else {
        0
    }
}

/// Splits a response's Transfer-Encoding into the codings before the chunked framing and
/// whether it ends with `chunked` (the framing the proxy decodes and makes again). `chunked`
/// anywhere but last is malformed.
fn split_codings(v: &[u8]) -> Result<(&[u8], bool), ProxyError> {
    let v = v.trim_ascii();
    let (init, last) = match v.iter().rposition(|b| *b == b',') {
        Some(i) => (v[..i].trim_ascii(), v[i + 1..].trim_ascii()),
        None => (&b""[..], v),
    };
    if init.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")) {
        return Err(ProxyError::UpstreamProtocol("chunked transfer coding not applied last"));
    }
    if init.split(|b| *b == b',').any(|t| t.trim_ascii().is_empty()) && !init.is_empty() || last.is_empty() {
        return Err(ProxyError::UpstreamProtocol("malformed Transfer-Encoding"));
    }
    if last.eq_ignore_ascii_case(b"chunked") {
        Ok((init, true))
    } else {
        Ok((v, false))
    }
}

#[cfg(test)]
mod tests {
    use super::{accepted_codings, split_codings};

    #[test]
    fn te_values() {
        assert_eq!(accepted_codings(b"gzip"), 1);
        assert_eq!(accepted_codings(b"trailers, deflate;q=0.5, GZIP"), 3);
        assert_eq!(accepted_codings(b"gzip;q=0, compress"), 4);
        assert_eq!(accepted_codings(b"trailers"), 0);
    }

    #[test]
    fn transfer_codings() {
        assert_eq!(split_codings(b"chunked").unwrap(), (&b""[..], true));
        assert_eq!(split_codings(b"gzip, chunked").unwrap(), (&b"gzip"[..], true));
        assert_eq!(split_codings(b"gzip ,  deflate ,Chunked").unwrap(), (&b"gzip ,  deflate"[..], true));
        assert_eq!(split_codings(b"gzip").unwrap(), (&b"gzip"[..], false));
        assert!(split_codings(b"chunked, gzip").is_err());
        assert!(split_codings(b"gzip,,chunked").is_err());
        assert!(split_codings(b"gzip, ").is_err());
    }
}
