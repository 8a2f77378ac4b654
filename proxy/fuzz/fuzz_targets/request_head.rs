//! The request side of the HTTP/1 head: what `conn::read_head` and `forward::prepare` do with
//! the bytes a client sends, up to the route and the request line sent upstream.
//!
//! Input: one byte choosing the global path normalisation, one byte choosing where the head is
//! cut for the "still arriving" check, then the bytes read from the client.
//!
//! `prepare` itself needs a running worker and connection, so this target calls the same
//! functions in the same order (httparse, `check_raw_head`, `classify`, `parse_content_length`,
//! `ConnectionOptions`, `parse_target`, `host_without_port`, `canonical`, `routing_key`,
//! `Router::find_ranked`, `Route::forward_path`) and checks what the worker relies on:
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
use ringway_proxy::h1::head::{
    check_partial_head, check_raw_head, classify, host_without_port, parse_content_length, BodyKind, ConnectionOptions,
    Known,
};
use ringway_proxy::h1::path::{canonical, parse_target, routing_key, Target};
use ringway_proxy::respond::push_header;
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

    // forward::prepare.
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let n = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return,
    };
    if !raw_ok {
        return;
    }
    // httparse takes a bare LF for a line end; with CRLF only, it ends the head where the
    // worker does.
    assert_eq!(n, head.len(), "httparse ends the head elsewhere");
    let headers = req.headers;
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return,
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");

    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut content_length = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut opts = ConnectionOptions::default();
    let mut te_accepts = 0u8;
    for h in headers.iter() {
        if h.name.as_bytes().contains(&b'_') {
            return;
        }
        match classify(h.name) {
            Known::Host => {
                hosts += 1;
                host = Some(h.value);
            }
            Known::ContentLength => {
                cl_count += 1;
                match parse_content_length(h.value) {
                    Some(n) => {
                        // 1*DIGIT: what it parsed is what was written, leading zeros aside.
                        let digits = std::str::from_utf8(h.value).expect("digits are ASCII");
                        assert_eq!(digits.parse::<u64>().ok(), Some(n));
                        content_length = Some(n)
                    }
                    None => return,
                }
            }
            Known::TransferEncoding => {
                te_count += 1;
                te = Some(h.value);
            }
            Known::Connection => {
                if opts.add(h.value).is_err() {
                    return;
                }
            }
            Known::Expect if !h.value.eq_ignore_ascii_case(b"100-continue") => return,
            Known::HopByHop if h.name.len() == 2 => te_accepts |= ringway_proxy::upstream::accepted_codings(h.value),
            _ => {}
        }
    }
    std::hint::black_box(te_accepts);
    if cl_count > 1 {
        return;
    }
    let body = match (te, content_length) {
        (Some(_), Some(_)) => return,
        (Some(_), None) if te_count > 1 || http10 => return,
        (Some(v), None) if v.eq_ignore_ascii_case(b"chunked") => BodyKind::Chunked,
        (Some(_), None) => return,
        (None, Some(n)) => BodyKind::Length(n),
        (None, None) => BodyKind::None,
    };
    if hosts > 1 || (hosts == 0 && !http10) {
        return;
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
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(forward.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
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
    match body {
        BodyKind::Length(n) => push_header(&mut out, b"content-length", n.to_string().as_bytes()),
        BodyKind::Chunked => push_header(&mut out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
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
