//! The upstream side of an exchange: reading the response head (skipping interim 1xx answers)
//! and turning it into the head sent to the client, with framing checked as strictly as on the
//! request side.
//!
//! Hot path.

use crate::stream::Stream;
use monoio::time::Instant;
use ringway_policy::{Layered, ResponseExtras, ResponseInfo};

use crate::h1::framing::coding_bit;
use crate::h1::head::{classify, BodyKind, Known, MAX_HEADERS};
use crate::h1::response;
use crate::h1::write::{push_framing, push_header, push_status_line, reason};
use crate::io::read_more;
use crate::respond::ProxyError;
use crate::spares::Spares;

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Reads a final (non-1xx) response head into `buf` (after what `buf` already holds); returns
/// its length. With `stop_at_continue`, an interim answer (`100 Continue`) ends the read
/// instead: it is removed from `buf` (what followed it stays) and the length returned is 0. On failure also says
/// whether nothing at all was received (so a stale pooled connection may be retried).
pub async fn read_response(
    up: &mut Stream,
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
    /// Transfer codings the client accepts besides chunked (see
    /// [`crate::h1::framing::accepted_codings`]).
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

/// Parses the response head `head` (see [`crate::h1::response`]), runs the route's response
/// policies on its fields and writes the client's head into `out`.
pub fn encode_response(head: &[u8], out: &mut Vec<u8>, c: &ClientSide<'_>) -> Result<ResponsePlan, ProxyError> {
    let bad = ProxyError::UpstreamProtocol;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let resp = response::parse(head, &mut storage, c.request_was_head).map_err(bad)?;
    let (status, body, codings) = (resp.status, resp.body, resp.codings);
    if !codings.is_empty() {
        // Only to an HTTP/1.1 client that said (in `TE`) it accepts every one of them.
        let accepted = |t: &[u8]| coding_bit(t.trim_ascii()) & c.te_accepts != 0;
        if c.http10 || !codings.split(|b| *b == b',').all(accepted) {
            return Err(bad("a transfer coding the client did not accept"));
        }
    }
    let plan = ResponsePlan { head_len: head.len(), status, body, keep_alive: resp.keep_alive };

    let mut list = c.spares.headers();
    for h in resp.headers.iter() {
        match classify(h.name) {
            // Framing of a body-less answer (HEAD, 304) describes the resource: keep it.
            Known::ContentLength if resp.no_body => list.push(h.name, h.value),
            Known::Other | Known::Host | Known::Expect | Known::Forwarded if !resp.connection.lists(h.name) => {
                list.push(h.name, h.value)
            }
            _ => {}
        }
    }
    list.set("x-request-id", c.request_id);
    c.chain.on_response(&ResponseInfo { status }, &mut list);

    let reason = Some(resp.reason).filter(|r| !r.is_empty()).unwrap_or_else(|| reason(status));
    push_status_line(out, status, reason);
    for h in list.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    c.spares.give_headers(list);
    crate::respond::push_extras(out, c.extras);
    push_framing(out, body, codings, c.http10);
    if plan.close_client(c) {
        out.extend_from_slice(b"connection: close\r\n");
    } else if c.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(plan)
}
