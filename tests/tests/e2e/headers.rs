//! Forwarded headers, request ids, hop-by-hop stripping, the headers policy.

use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::{both_drivers, single};

both_drivers!(forwarded_headers_and_request_id, hop_by_hop_stripped_both_ways, headers_policy_edits_both_directions);

fn forwarded_headers_and_request_id(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.request("GET", "/x?q=1", &[("Host", "Shop.Example:8080"), ("X-Forwarded-For", "6.6.6.6")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "a GET /x?q=1");
    let seen = &up.requests()[0];
    // Untrusted inbound X-Forwarded-For is replaced, not appended to.
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("Shop.Example:8080"));
    assert_eq!(seen.header("host"), Some("Shop.Example:8080"));
    let id = r.header("x-request-id").expect("generated request id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    // Every request gets its own id; a client's own id is kept.
    let r2 = c.get("/y");
    assert_ne!(r2.header("x-request-id"), Some(id.as_str()));
    let r3 = c.request("GET", "/z", &[("X-Request-Id", "client-id-42")], b"");
    assert_eq!(r3.header("x-request-id"), Some("client-id-42"));
    assert_eq!(up.requests()[2].header("x-request-id"), Some("client-id-42"));
}

fn hop_by_hop_stripped_both_ways(driver: &str) {
    let up = Upstream::start("a", |_| {
        Reply::Full(
            200,
            vec![
                ("Connection".into(), "X-Internal".into()),
                ("X-Internal".into(), "secret".into()),
                ("Keep-Alive".into(), "timeout=5".into()),
                ("Upgrade".into(), "h2c".into()),
                ("Proxy-Connection".into(), "keep-alive".into()),
                ("X-Kept".into(), "yes".into()),
            ],
            b"ok".to_vec(),
        )
    });
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "GET",
        "/",
        &[
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "1"),
            ("Keep-Alive", "timeout=9"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = &up.requests()[0];
    for h in ["connection", "x-drop-me", "keep-alive", "te", "upgrade", "proxy-connection"] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    for h in ["x-internal", "keep-alive", "upgrade", "proxy-connection"] {
        assert_eq!(r.header(h), None, "{h} reached the client");
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert_eq!(r.header("connection"), None);
}

fn headers_policy_edits_both_directions(driver: &str) {
    let up = Upstream::start("a", |_| {
        Reply::Full(
            200,
            vec![("Server".into(), "origin/1.0".into()), ("X-Powered-By".into(), "php".into())],
            b"ok".to_vec(),
        )
    });
    let policy = "    policies:\n      headers:\n        request:\n          set: {x-gateway: ringway, x-tenant: t1}\n          add: {x-extra: two}\n          remove: [cookie]\n        response:\n          set: {server: ringway}\n          remove: [x-powered-by]\n          add: {x-frame-options: DENY}\n";
    let gw = Gateway::start_with(&single(&[up.addr], "", policy), driver, &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.request("GET", "/", &[("Cookie", "session=1"), ("X-Tenant", "spoofed"), ("X-Extra", "one")], b"");
    assert_eq!(r.status, 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(seen.header_all("x-tenant"), ["t1"]);
    assert_eq!(seen.header("x-gateway"), Some("ringway"));
    assert_eq!(seen.header_all("x-extra"), ["one", "two"]);
    assert_eq!(r.header("server"), Some("ringway"));
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}
