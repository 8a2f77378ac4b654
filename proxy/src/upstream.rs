//! The upstream side of an exchange: writing the request head, reading the response head
//! (skipping interim 1xx answers) into the protocol-neutral head the client's session writes,
//! with framing checked as strictly as on the request side.
//!
//! Hot path.

use crate::stream::Stream;
use monoio::time::Instant;
use ringway_policy::{HeaderList, RequestHead, ResponseHead, Version};

use crate::h1::head::{classify, BodyKind, Known};
use crate::h1::response;
use crate::h1::write::{push_framing, push_header, push_request_line};
use crate::io::read_more;
use crate::respond::ProxyError;
use crate::spares::Spares;

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Reads a final (non-1xx) response head into `buf` (after what `buf` already holds); returns
/// its length. With `stop_at_continue`, an interim answer (`100 Continue`) ends the read
/// instead: it is removed from `buf` (what followed it stays) and the length returned is 0. On
/// failure also says whether nothing at all was received (so a stale pooled connection may be
/// retried).
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

/// Writes the request head the upstream gets (HTTP/1.1): `head`'s method, path and query,
/// the fields in `list` (as the policies left them), and the framing of the body.
pub fn encode_request(out: &mut Vec<u8>, head: &RequestHead<'_>, list: &HeaderList<'_>, body: BodyKind) {
    push_request_line(out, head.method, head.path, head.query);
    for h in list.iter() {
        push_header(out, h.name.as_bytes(), &h.value);
    }
    push_framing(out, body, b"", false);
    out.extend_from_slice(b"\r\n");
}

/// What the response head said about the rest of the exchange.
#[derive(Debug, Clone, Copy)]
pub struct ResponsePlan {
    pub status: u16,
    pub body: BodyKind,
    /// Whether the upstream connection may be reused after the body.
    pub keep_alive: bool,
}

/// Parses the upstream's response head `head` (see [`crate::h1::response`]) into what the
/// client's session, the policies and the cache see: the plan, the transfer codings the body
/// carries, and the head with its end-to-end fields (hop-by-hop and framing fields removed; a
/// body-less answer keeps its `Content-Length`, which describes the resource).
pub fn response_head<'h>(
    head: &'h [u8],
    storage: &'h mut [httparse::Header<'h>],
    request_was_head: bool,
    spares: &Spares,
) -> Result<(ResponsePlan, &'h [u8], ResponseHead<'h>), ProxyError> {
    let resp = response::parse(head, storage, request_was_head).map_err(ProxyError::UpstreamProtocol)?;
    let plan = ResponsePlan { status: resp.status, body: resp.body, keep_alive: resp.keep_alive };
    let mut headers = spares.headers();
    for h in resp.headers.iter() {
        match classify(h.name) {
            Known::ContentLength if resp.no_body => headers.push(h.name, h.value),
            Known::Other | Known::Host | Known::Expect | Known::Forwarded if !resp.connection.lists(h.name) => {
                headers.push(h.name, h.value)
            }
            _ => {}
        }
    }
    let version = if resp.http10 { Version::Http10 } else { Version::Http11 };
    let reason = Some(resp.reason).filter(|r| !r.is_empty());
    Ok((plan, resp.codings, ResponseHead::new(resp.status, reason, version, headers)))
}
