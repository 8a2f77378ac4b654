//! `GET /metrics` on the admin listener and on `--metrics-listen`; YAML only for whole
//! documents; the admin connection caps.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringway_tests::gateway::{default_driver, scratch_dir};
use ringway_tests::{Client, Gateway, Response};

fn start(extra: &[&str]) -> Gateway {
    Gateway::start_in(scratch_dir(), None, &default_driver(), extra).unwrap_or_else(|(s, log)| panic!("{s:?}\n{log}"))
}

use crate::admin_edge::refused;

fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let host = addr.to_string();
    let mut h: Vec<(&str, &str)> = Vec::new();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        h.push(("Host", &host));
    }
    h.extend_from_slice(headers);
    Client::connect(addr).request(method, path, &h, body)
}

fn assert_metrics(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    assert!(text.contains("# HELP ringway_build_info "), "{text}");
    assert!(text.contains("# TYPE ringway_build_info gauge\n"), "{text}");
    let line = format!("ringway_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&line), "{text}");
}

#[test]
fn metrics_answer_on_the_admin_and_the_metrics_listener() {
    let gw = start(&["--metrics-listen", "127.0.0.1:0", "--admin-token", "s3cret"]);
    let m = gw.metrics.expect("the metrics listener's address");
    // The metrics listener: no token, any Host (scrapers name the target as they know it).
    assert_metrics(&call(m, "GET", "/metrics", &[("Host", "gw-1.internal:9100")], b""));
    assert_metrics(&call(m, "GET", "/metrics", &[], b""));
    // ...and nothing else.
    let v = refused(&call(m, "GET", "/admin/v1/status", &[], b""), 404, "not_found");
    assert!(v["message"].as_str().unwrap().contains("/metrics"), "{v}");
    refused(&call(m, "GET", "/", &[], b""), 404, "not_found");
    refused(&call(m, "POST", "/metrics", &[("Content-Type", "application/json")], b"{}"), 405, "method_not_allowed");
    // Its heads are held to the same strict rules.
    let mut c = Client::connect(m);
    c.send(b"GET /metrics HTTP/1.1\nHost: x\n\n");
    refused(&c.read_response(false), 400, "bad_request");

    // The admin listener: /metrics under the admin API's token and Host rules.
    let auth = ("Authorization", "Bearer s3cret");
    refused(&call(gw.admin, "GET", "/metrics", &[], b""), 401, "unauthorized");
    assert_metrics(&call(gw.admin, "GET", "/metrics", &[auth], b""));
    refused(&call(gw.admin, "GET", "/metrics", &[auth, ("Host", "evil.example")], b""), 403, "forbidden_host");
    let r = call(gw.admin, "POST", "/metrics", &[auth, ("Content-Type", "application/json")], b"");
    refused(&r, 405, "method_not_allowed");
}

#[test]
fn metrics_on_the_admin_listener_alone_without_a_token() {
    let gw = start(&[]);
    assert!(gw.metrics.is_none());
    assert_metrics(&call(gw.admin, "GET", "/metrics", &[], b""));
}

#[test]
fn yaml_is_accepted_only_for_whole_documents() {
    let gw = start(&[]);
    let yaml = [("Content-Type", "application/yaml")];
    let doc =
        b"upstreams:\n  u:\n    targets: [{addr: \"127.0.0.1:1\"}]\nroutes:\n  r: {paths: [\"/*\"], upstream: u}\n";
    let r = call(gw.admin, "PUT", "/admin/v1/config?dry_run=true", &yaml, doc);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(gw.admin, "PUT", "/admin/v1/config", &[("Content-Type", "text/yaml")], doc);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revision"], 1);
    // One resource: JSON only, and the refusal names what is accepted.
    for (method, path, body) in [
        ("PUT", "/admin/v1/routes/r2", &b"paths: [\"/b\"]\nupstream: u\n"[..]),
        ("PATCH", "/admin/v1/routes/r", b"priority: 2\n"),
        ("PUT", "/admin/v1/upstreams/v", b"targets: []\n"),
        ("PUT", "/admin/v1/global_policies", b"{}\n"),
        ("PATCH", "/admin/v1/global_policies", b"{}\n"),
    ] {
        let v = refused(&call(gw.admin, method, path, &yaml, body), 415, "unsupported_media_type");
        assert!(v["message"].as_str().unwrap().contains("application/json"), "{method} {path}: {v}");
    }
    let r =
        call(gw.admin, "PATCH", "/admin/v1/routes/r", &[("Content-Type", "application/json")], b"{\"priority\": 2}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gw.admin("GET", "/admin/v1/status", None).json()["revision"],
        2,
        "a refused write changed the configuration"
    );
}

/// A connection that has sent part of a request head and stalls.
fn stalled(admin: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(admin).expect("connect");
    s.write_all(format!("PUT /admin/v1/config HTTP/1.1\r\nHost: {admin}\r\nContent-Ty").as_bytes()).unwrap();
    s
}

/// Whether the gateway closed `s` within `wait` (it never answers a stalled request).
fn closed(s: &TcpStream, wait: Duration) -> bool {
    Client::from_stream(s.try_clone().unwrap()).is_closed(wait)
}

/// Sends whole requests until one of them took `victim`'s slot. The gateway may not have read
/// the stalled heads yet when the first arrives (then that one takes a free slot): a few tries.
fn evicts(gw: &Gateway, victim: &TcpStream) -> bool {
    for _ in 0..10 {
        let r = gw.admin("GET", "/admin/v1/status", None);
        assert_eq!(r.status, 200, "{}", r.text());
        if closed(victim, Duration::from_millis(300)) {
            return true;
        }
    }
    false
}

#[test]
fn admin_connection_caps_give_slots_to_requests_that_arrive_whole() {
    // In all: two busy connections at most; a whole request takes the oldest reader's slot.
    let gw = start(&["--admin-max-conns", "2"]);
    let a = stalled(gw.admin);
    std::thread::sleep(Duration::from_millis(50));
    let b = stalled(gw.admin);
    assert!(evicts(&gw, &a), "the oldest stalled request kept its slot");
    // A new stalled request takes the free slot; the next whole request takes the older one's.
    let c = stalled(gw.admin);
    assert!(evicts(&gw, &b), "the older stalled request kept its slot");
    assert!(!closed(&c, Duration::from_millis(500)), "a newer stalled request lost its slot first");
    // Idle connections hold no slot.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(gw.admin).unwrap()).collect();
    assert_eq!(gw.admin("GET", "/admin/v1/status", None).status, 200);
    drop((c, idle));

    // Per client address: one busy connection from 127.0.0.1.
    let gw = start(&["--admin-max-conns-per-addr", "1"]);
    let a = stalled(gw.admin);
    assert!(evicts(&gw, &a), "the stalled request kept the address's slot");
}
