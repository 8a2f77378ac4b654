//! The upstream side: what `upstream::read_response` does with the bytes an origin sends
//! (find the head, drop interim 1xx answers), `upstream::response_head`, which checks the head
//! and reads it into the protocol-neutral head, and `session::h1::encode_head`, which writes
//! the one an HTTP/1 client gets.
//!
//! Input: one byte of client-side flags (HEAD request, HTTP/1.0 client, accepted transfer
//! codings, stop at `100 Continue`), then the bytes read from the upstream.
//!
//! Checks: a head accepted is the head found, with a status in 200..=999; the head written for
//! the client parses back as exactly one response head with that status, has CRLF line ends
//! only, and frames the body as the plan says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_proxy::h1::head::{check_raw_head, BodyKind};
use ringway_proxy::session::h1::encode_head;
use ringway_proxy::session::{Answer, Asked, BodyLen};
use ringway_proxy::spares::Spares;
use ringway_proxy::upstream::response_head;

/// Largest upstream response head (`upstream::MAX_RESPONSE_HEAD`).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [flags, upstream @ ..] = data else { return };
    let request_was_head = flags & 1 != 0;
    let http10 = flags & 2 != 0;
    let stop_at_continue = flags & 4 != 0;
    let close = flags & 8 != 0;
    let te_accepts = (flags >> 4) & 7;

    // read_response, over everything at once.
    let mut buf = upstream.to_vec();
    let head_len = loop {
        let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") else { return };
        let head_len = i + 4;
        if buf.len() >= 12 && buf.starts_with(b"HTTP/1.") && buf[9] == b'1' {
            if &buf[9..12] == b"101" {
                return;
            }
            buf.drain(..head_len);
            if stop_at_continue {
                return;
            }
            continue;
        }
        if head_len > MAX_RESPONSE_HEAD {
            return;
        }
        break head_len;
    };
    let head = &buf[..head_len];

    let spares = Spares::default();
    let mut storage = [httparse::EMPTY_HEADER; ringway_proxy::forward::MAX_HEADERS];
    let Ok((plan, codings, mut parsed)) = response_head(head, &mut storage, request_was_head, &spares) else { return };
    assert!((200..=999).contains(&plan.status), "status {}", plan.status);
    if request_was_head || plan.status == 204 || plan.status == 304 {
        assert_eq!(plan.body, BodyKind::None);
    }
    parsed.headers.set("x-request-id", &b"0123456789abcdef0123456789abcdef"[..]);
    let len = match plan.body {
        BodyKind::None => BodyLen::None,
        BodyKind::Length(n) => BodyLen::Known(n),
        BodyKind::Chunked | BodyKind::UntilClose => BodyLen::Unknown,
    };
    let asked = Asked { http10, te_accepts, head_only: request_was_head };
    let mut out = Vec::new();
    let Ok(framed) = encode_head(&mut out, &asked, &parsed, &Answer { codings, ..Answer::new(len, close) }) else {
        assert!(out.is_empty(), "a refused head wrote something");
        return;
    };
    assert_eq!(plan.status, parsed.status());

    check_raw_head(&out).expect("the client's head has only CRLF line ends");
    let mut storage = [httparse::EMPTY_HEADER; ringway_proxy::forward::MAX_HEADERS + 8];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "the client's head is longer than its first head")
        }
        other => panic!("the client's head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    }
    assert_eq!(resp.code, Some(plan.status));
    assert_eq!(resp.version, Some(1));
    let values = |name: &str| -> Vec<&[u8]> {
        resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value).collect()
    };
    let te = values("transfer-encoding");
    let cl = values("content-length");
    match plan.body {
        BodyKind::Length(n) => {
            assert!(te.is_empty(), "Content-Length and Transfer-Encoding both sent");
            assert_eq!(cl, [n.to_string().as_bytes()], "Content-Length sent");
        }
        BodyKind::Chunked | BodyKind::UntilClose if !http10 => {
            assert_eq!(te.len(), 1);
            assert!(te[0].ends_with(b"chunked"));
            assert!(cl.is_empty(), "Content-Length and Transfer-Encoding both sent");
            assert!(framed.chunked);
        }
        BodyKind::Chunked | BodyKind::UntilClose => {
            assert!(te.is_empty(), "Transfer-Encoding sent to an HTTP/1.0 client");
            assert!(cl.is_empty());
            assert!(framed.close, "an HTTP/1.0 client cannot tell where this body ends");
        }
        BodyKind::None => assert!(te.is_empty(), "Transfer-Encoding on an answer without a body"),
    }
});
