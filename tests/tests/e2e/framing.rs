//! Strict HTTP/1.1 framing at the edge: every smuggling-shaped or malformed request is refused
//! with a JSON error, the connection is closed, and nothing reaches the upstream.

use std::time::Duration;

use ringway_tests::{Client, Gateway, Upstream};

use crate::{both_drivers, single};

both_drivers!(
    malformed_requests_are_refused_and_closed,
    a_refused_head_after_a_head_request_gets_its_body,
    pipelined_requests_answered_in_order,
    oversized_heads_get_431,
    heads_arriving_in_pieces_are_served
);

const CASES: &[(&str, &[u8], u16)] = &[
    (
        "CL with TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE with CL",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("two CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\nx", 400),
    ("CL plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    (
        "two TE",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE on 1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("TE chunked-ish", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF in header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("underscore name", b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n", 400),
    ("no Host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad Host", b"GET / HTTP/1.1\r\nHost: a b@c\r\n\r\n", 400),
    (
        "chunk size 0x",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "empty chunk size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        400,
    ),
    ("chunk bare LF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    (
        "chunk data overrun",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "bad chunk ext",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("dot segments above the root", b"GET /a/../../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("encoded dots above the root", b"GET /%2e%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("encoded backslash", b"GET /a%5cb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("encoded NUL", b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("backslash", b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute form, other scheme", b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    ("bad expect", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx", 417),
];

fn malformed_requests_are_refused_and_closed(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    for (name, raw, status) in CASES {
        let mut c = Client::connect(gw.addr);
        c.send(raw);
        let r = c.try_read_response(false).unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{name}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert!(c.is_closed(Duration::from_secs(5)), "{name}: connection left open");
    }
    assert_eq!(up.request_count(), 0, "a malformed request reached the upstream: {:?}", up.requests());
    // The gateway still serves well-formed requests.
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/fine").status, 200);
}

/// What a HEAD request asked of its answer does not carry over to the next request on the
/// connection: the error for a malformed head that follows is sent whole.
fn a_refused_head_after_a_head_request_gets_its_body(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(b"HEAD /first HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response(true).status, 200);
    c.send(b"GET /second HTTP/1.1\nHost: a\n\n");
    let r = c.try_read_response(false).expect("the whole error answer");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request", "{}", r.text());
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
}

fn pipelined_requests_answered_in_order(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response(false).text(), "a GET /1");
    assert_eq!(c.read_response(false).text(), "a POST /2");
    assert_eq!(c.read_response(false).text(), "a GET /3");
    assert_eq!(up.requests()[1].body, b"abc");
}

fn heads_arriving_in_pieces_are_served(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let head = b"GET /split HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n";
    // Cut after a CR, after a CRLF, inside a name, and one byte at a time.
    let cuts: Vec<Vec<usize>> = vec![
        vec![head.iter().position(|b| *b == b'\r').unwrap() + 1],
        vec![head.windows(2).position(|w| w == b"\r\n").unwrap() + 2],
        vec![22],
        (1..head.len()).collect(),
    ];
    for cut in cuts {
        let mut c = Client::connect(gw.addr);
        let mut from = 0;
        for at in cut.into_iter().chain([head.len()]) {
            c.send(&head[from..at]);
            std::thread::sleep(std::time::Duration::from_millis(5));
            from = at;
        }
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "a GET /split");
    }
}

fn oversized_heads_get_431(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    big.push_str(&format!("X-Big: {}\r\n\r\n", "v".repeat(70 * 1024)));
    for raw in [many, big] {
        let mut c = Client::connect(gw.addr);
        c.send(raw.as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 431, "{}", r.text());
        assert!(c.is_closed(Duration::from_secs(5)));
    }
    assert_eq!(up.request_count(), 0);
}
