//! The request side of the HTTP/1 head: what `conn::read_head` and `forward::prepare` do with
//! the bytes a client sends, up to the route and the request line sent upstream.
//!
//! Input: one byte choosing the global path normalisation, one byte choosing where the head is
//! cut for the "still arriving" check, then the bytes read from the client.
//!
//! `prepare` itself needs a running worker and connection, so this target calls the same
//! functions in the same order (`h1::request::parse`, `parse_target`, `host_without_port`,
//! `canonical`, `routing_key`, `Router::find_ranked`, `Route::forward_path`) and checks what the
//! worker relies on:
//!
//! - a head that passes `check_raw_head` passes `check_partial_head` at every cut;
//! - a canonical path is its own canonical form (borrowed), under every normalisation;
//! - a routing key starts with '/';
//! - a host name fits the worker's 256-byte lower-casing buffer;
//! - the request line and headers written for the upstream parse back as exactly one request
//!   head with the same method, path and query.

#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringway_fuzz::normalization;
use ringway_proxy::h1::head::{check_partial_head, check_raw_head, classify, host_without_port, BodyKind, Known};
use ringway_proxy::h1::path::{canonical, parse_target, routing_key, Target};
use ringway_proxy::h1::request;
use ringway_proxy::h1::write::{push_framing, push_header, push_request_line};
use ringway_proxy::{ConfigSpec, Snapshot};

/// `forward::MAX_HEADERS`.
const MAX_HEADERS: usize = ringway_proxy::forward::MAX_HEADERS;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let doc = r#"{
            "upstreams": {"u": {"targets": [{"addr": "127.0.0.1:1"}]}},
            "routes": {
                "any": {"paths": ["/*"], "upstream": "u"},
                "users": {"hosts": ["api.example.com"], "paths": ["/users/{id}", "/users/me"],
                          "methods": ["GET", "HEAD"], "upstream": "u"},
                "wild": {"hosts": ["*.example.com"], "paths": ["/a/*"], "strip_prefix": "/a", "upstream": "u"},
                "login": {"paths": ["/login"], "headers": {"x-env": "test"}, "upstream": "u"},
                "files": {"paths": ["/files/*", "/files/{name}/raw"], "upstream": "u",
                          "policies": {"path_normalization": {"escaped_slashes": "decode",
                                       "semicolons": "literal", "trailing_slash": "strict"}}},
                "group": {"paths": ["/projects/{id}"], "upstream": "u"},
                "admin": {"paths": ["/admin/*"], "priority": 10, "upstream": "u",
                          "policies": {"path_normalization": {"dot_segments": "reject"}}}
            }
        }"#;
        let spec: ConfigSpec = serde_json::from_str(doc).expect("fixed configuration parses");
        Snapshot::compile(&spec, 1).expect("fixed configuration compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let [norm, cut, buf @ ..] = data else { return };
    let global = normalization(*norm);

    // conn::read_head: the head ends at the first CRLFCRLF; before that, every read is checked
    // with check_partial_head.
    let Some(i) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        let _ = check_partial_head(buf);
        return;
    };
    let head = &buf[..i + 4];
    let raw_ok = check_raw_head(head).is_ok();
    if raw_ok {
        // What arrived before the whole head was there passed the partial check too.
        let at = usize::from(*cut) * head.len() / 256;
        assert!(check_partial_head(&head[..at]).is_ok(), "a prefix of a valid head fails the partial check");
    }
    let _ = check_partial_head(head);

    // forward::prepare: the head through the codec (h1::request).
    if raw_ok {
        // httparse takes a bare LF for a line end; with CRLF only, it ends the head where the
        // worker does.
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if let Ok(httparse::Status::Complete(n)) = httparse::Request::new(&mut storage).parse(head) {
            assert_eq!(n, head.len(), "httparse ends the head elsewhere");
        }
    }
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(req) = request::parse(head, &mut storage, MAX_HEADERS) else { return };
    assert!(raw_ok, "a head with bare CR, LF or NUL was accepted");
    let (method, target, http10, body, opts) = (req.method, req.target, req.http10, req.body, req.connection);
    let host = req.host;
    let hosts = usize::from(host.is_some());
    let headers = req.headers;
    assert!(hosts == 1 || http10, "an HTTP/1.1 request without Host was accepted");
    if let BodyKind::Length(n) = body {
        // 1*DIGIT: what it parsed is what was written, leading zeros aside.
        let cl = headers.iter().find(|h| classify(h.name) == Known::ContentLength).expect("a Content-Length");
        let digits = std::str::from_utf8(cl.value).expect("digits are ASCII");
        assert_eq!(digits.parse::<u64>().ok(), Some(n));
    }
    let Ok(Target { authority, path: raw_path, query }) = parse_target(target) else { return };
    assert!(raw_path.starts_with('/'), "{target:?} gave the path {raw_path:?}");
    let routed_host = match authority {
        Some(a) => Some(a.as_bytes()),
        None => host,
    };
    let host_name = match routed_host.map(host_without_port) {
        Some(Ok(h)) => h,
        Some(Err(_)) => return,
        None => "",
    };
    // The worker lower-cases the host into a 256-byte buffer.
    assert!(host_name.len() <= 256, "host of {} bytes", host_name.len());
    let host_lc = host_name.to_ascii_lowercase();

    let Ok(path) = canonical(raw_path, &global) else { return };
    check_canonical(&path, &global);
    let key = routing_key(&path, &global);
    assert!(key.starts_with('/'), "routing key {key:?} of {path:?}");

    let snapshot = snapshot();
    let find_header = |name: &str| headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let Some((route, rank)) = snapshot.router.find_ranked(&host_lc, &key, |r| r.admits(method, find_header)) else {
        return;
    };
    if global.escaped_slashes == ringway_policy::EscapedSlashes::Keep
        && memchr::memmem::find(path.as_bytes(), b"%2F").is_some()
    {
        let decoded = path.replace("%2F", "/");
        let key = routing_key(&decoded, &global);
        assert!(key.starts_with('/'));
        let other = snapshot.router.find_ranked(&host_lc, &key, |r| r.admits(method, find_header));
        if other.is_some_and(|(r, other_rank)| !std::sync::Arc::ptr_eq(r, route) && other_rank > rank) {
            return;
        }
    }
    // Snapshot::path_normalization, for a snapshot whose global normalisation is `global`.
    let own = route.path_normalization.as_ref().unwrap_or(&global);
    let path = if *own == global {
        path
    } else {
        let Ok(mine) = canonical(raw_path, own) else { return };
        check_canonical(&mine, own);
        let again = snapshot.router.find(&host_lc, &routing_key(&mine, own), |r| r.admits(method, find_header));
        if !again.is_some_and(|r| std::sync::Arc::ptr_eq(r, route)) {
            return;
        }
        mine
    };
    let forward = route.forward_path(&path);
    assert!(forward.starts_with('/'), "forward path {forward:?} of {path:?}");

    // The upstream head, as prepare writes it (its own headers left out: they are constants).
    let mut out = Vec::new();
    push_request_line(&mut out, method, forward, query);
    for h in headers.iter() {
        match classify(h.name) {
            Known::Host => push_header(&mut out, h.name.as_bytes(), h.value),
            Known::Other if !opts.lists(h.name) => push_header(&mut out, h.name.as_bytes(), h.value),
            _ => {}
        }
    }
    if hosts == 0 {
        if let Some(h) = routed_host {
            push_header(&mut out, b"host", h);
        }
    }
    push_framing(&mut out, body, b"", false);
    out.extend_from_slice(b"\r\n");
    check_raw_head(&out).expect("the upstream head has only CRLF line ends");
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
    let mut again = httparse::Request::new(&mut storage);
    match again.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "the upstream head is longer than its first head")
        }
        other => panic!("the upstream head does not parse: {other:?}\n{}", String::from_utf8_lossy(&out)),
    }
    assert_eq!(again.method, Some(method));
    let (p, q) = match again.path.unwrap().split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (again.path.unwrap(), None),
    };
    assert_eq!(p, forward);
    assert_eq!(q, query);
});

/// A canonical path is canonical: canonicalising it again borrows it unchanged.
fn check_canonical(path: &Cow<'_, str>, o: &ringway_policy::PathNormalization) {
    assert!(path.starts_with('/'), "canonical path {path:?}");
    match canonical(path, o) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &**path),
        other => panic!("canonical path {path:?} is not canonical under {o:?}: {other:?}"),
    }
}
