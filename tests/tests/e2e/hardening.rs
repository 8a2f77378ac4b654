//! Edge hardening: what one client must never receive of another's exchange (pooled upstream
//! connections with bytes in flight, cache variants), what `Connection` may not remove, client
//! addresses behind trusted proxies, slow and greedy clients, and origins that break framing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::{both_drivers, single};

both_drivers!(
    surplus_bytes_on_an_idle_upstream_connection_never_reach_the_next_client,
    connections_the_origin_closed_are_not_used,
    a_response_varying_on_an_unkeyed_header_is_not_shared,
    connection_cannot_remove_host_or_keyed_headers,
    client_address_claims_and_trusted_hops,
    malformed_and_coded_upstream_bodies,
    expectations_are_answered_by_the_origin,
    slow_bodies_hold_no_upstream_connection_and_are_cut,
    connection_caps_per_address_and_per_node,
    request_bodies_have_a_default_cap,
);

fn surplus_bytes_on_an_idle_upstream_connection_never_reach_the_next_client(driver: &str) {
    // A complete response of its own, sent a moment after the framed one ended.
    let poison = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON".to_vec();
    let up = Upstream::start("u", move |r| {
        let framed = match r.target.as_str() {
            // A body after a HEAD answer.
            "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n".to_vec(),
            // A 204 with a body.
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            // More than Content-Length.
            "/over" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            _ => return Reply::Full(200, vec![], format!("fresh {}", r.target).into_bytes()),
        };
        Reply::ThenRaw(Box::new(Reply::Raw(framed)), Duration::from_millis(50), poison.clone())
    });
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &["--workers", "1"]);
    for (method, path) in [("HEAD", "/head"), ("GET", "/204"), ("GET", "/over")] {
        let r = Client::connect(gw.addr).request(method, path, &[], b"");
        assert!(matches!(r.status, 200 | 204), "{method} {path}: {}", r.status);
        // The surplus reaches the gateway's idle connection before the next request.
        std::thread::sleep(Duration::from_millis(300));
        let r = Client::connect(gw.addr).get("/next");
        assert_eq!(r.text(), "fresh /next", "another client's exchange after {method} {path}");
    }
}

fn connections_the_origin_closed_are_not_used(driver: &str) {
    // An origin that closes connections idle for 200 ms (gunicorn: 2 s, Node.js: 5 s).
    let up = Upstream::start_with_keepalive("u", Duration::from_millis(200), |r| {
        Reply::Full(200, vec![], format!("{} {}", r.method, r.body_len).into_bytes())
    });
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.request("POST", "/a", &[], b"one").status, 200);
    for wait in [500, 1500] {
        // Before and after the gateway's once-a-second check of its idle connections.
        std::thread::sleep(Duration::from_millis(wait));
        let r = c.request("POST", "/b", &[], b"three");
        assert_eq!((r.status, r.text()), (200, "POST 5".to_string()), "a POST after {wait} ms idle");
    }
    assert_eq!(up.accepted(), 3);
}

fn a_response_varying_on_an_unkeyed_header_is_not_shared(driver: &str) {
    let up = Upstream::start("u", |r| {
        let vary = match r.target.as_str() {
            "/lang" => "Accept-Language",
            "/xff" => "X-Forwarded-For",
            _ => "Authorization",
        };
        let who = r.header("authorization").unwrap_or("nobody");
        Reply::Full(
            200,
            vec![("cache-control".into(), "public, max-age=60".into()), ("vary".into(), vary.into())],
            format!("for {who}").into_bytes(),
        )
    });
    let cfg = single(&[up.addr], "", "    policies:\n      cache: {ttl: 60s}\n");
    let gw = Gateway::start_with(&cfg, driver, &["--workers", "1"]);
    let get = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        Client::connect(gw.addr).request("GET", path, &headers, b"")
    };
    for (auth, want) in [
        (Some("Bearer alice"), "for Bearer alice"),
        (Some("Bearer bob"), "for Bearer bob"),
        (None, "for nobody"),
        (Some("Bearer carol"), "for Bearer carol"),
        (None, "for nobody"),
    ] {
        let r = get("/me", auth);
        assert_eq!(r.text(), want);
        assert_ne!(r.header("x-cache-status"), Some("HIT"), "{auth:?}");
    }
    // Accept-Language never reaches the upstream of a cacheable request (it is not keyed):
    // the answer cannot depend on it, so it is stored.
    assert_eq!(get("/lang", None).header("x-cache-status"), Some("MISS"));
    let r = Client::connect(gw.addr).request("GET", "/lang", &[("Accept-Language", "fr")], b"");
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    // The proxy's own per-client field reaches the upstream unkeyed: not stored.
    for _ in 0..2 {
        assert_eq!(get("/xff", None).header("x-cache-status"), Some("MISS"));
    }
}

fn connection_cannot_remove_host_or_keyed_headers(driver: &str) {
    let up = Upstream::start("u", |r| {
        let body =
            format!("tenant={} host={}", r.header("x-tenant").unwrap_or("none"), r.header("host").unwrap_or("none"));
        Reply::Full(200, vec![("cache-control".into(), "max-age=60".into())], body.into_bytes())
    });
    let cfg = single(&[up.addr], "", "    policies:\n      cache: {ttl: 60s, vary: [x-tenant]}\n");
    let gw = Gateway::start_with(&cfg, driver, &["--workers", "1"]);
    let get = |headers: &[(&str, &str)]| Client::connect(gw.addr).request("GET", "/t", headers, b"");
    // The tenant's answer is stored under the tenant's key: the origin saw the tenant.
    let r = get(&[("Host", "h.test"), ("X-Tenant", "a"), ("Connection", "x-tenant")]);
    assert_eq!((r.text().as_str(), r.header("x-cache-status")), ("tenant=a host=h.test", Some("MISS")));
    let r = get(&[("Host", "h.test"), ("X-Tenant", "a")]);
    assert_eq!((r.text().as_str(), r.header("x-cache-status")), ("tenant=a host=h.test", Some("HIT")));
    let r = get(&[("Host", "h.test")]);
    assert_eq!(r.text(), "tenant=none host=h.test");
    // `Connection: host` does not remove Host (uncached route through a request with a body).
    let r = Client::connect(gw.addr).request("POST", "/t", &[("Host", "h.test"), ("Connection", "host")], b"x");
    assert_eq!(r.text(), "tenant=none host=h.test");
}

fn client_address_claims_and_trusted_hops(driver: &str) {
    let up = Upstream::echo("a");
    // Untrusted: every claim about the client is dropped or replaced.
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let claims = [
        ("Forwarded", "for=6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Client-IP", "6.6.6.6"),
        ("X-Forwarded-For", "6.6.6.6"),
    ];
    assert_eq!(Client::connect(gw.addr).request("GET", "/x", &claims, b"").status, 200);
    let seen = &up.requests()[0];
    for name in ["forwarded", "x-real-ip", "x-client-ip"] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    drop(gw);

    // Trusted hops, but this peer is not one of the trusted proxies: a client like any other.
    let gw = Gateway::start_with(
        &single(&[up.addr], "", ""),
        driver,
        &["--trusted-hops", "1", "--trusted-proxies", "10.0.0.0/8,192.168.0.0/16"],
    );
    let lines = [("X-Forwarded-For", "5.5.5.5")];
    assert_eq!(Client::connect(gw.addr).request("GET", "/x", &lines, b"").status, 200);
    assert_eq!(up.requests().last().unwrap().header_all("x-forwarded-for"), ["127.0.0.1"]);
    drop(gw);

    // Two trusted proxies: the client is the second entry from the right of the joined
    // inbound lines (the farther proxy wrote it); `key: ip` limits count it, not what the
    // client wrote further left.
    let cfg = single(&[up.addr], "", "    policies:\n      rate_limit: {limit: 1, window: 60s, key: ip}\n");
    let gw = Gateway::start_with(&cfg, driver, &["--trusted-hops", "2"]);
    let send = |lines: &[(&str, &str)]| Client::connect(gw.addr).request("GET", "/y", lines, b"").status;
    let lines = [("X-Forwarded-For", "1.1.1.1, 9.9.9.9"), ("X-Forwarded-For", "5.5.5.5")];
    assert_eq!(send(&lines), 200);
    let seen = up.requests().last().cloned().unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), ["1.1.1.1, 9.9.9.9, 5.5.5.5, 127.0.0.1"]);
    // Another spoofed leftmost entry, same trusted position: the same client.
    assert_eq!(send(&[("X-Forwarded-For", "2.2.2.2, 9.9.9.9, 5.5.5.5")]), 429);
    // A different client behind the same proxies.
    assert_eq!(send(&[("X-Forwarded-For", "9.9.9.9, 7.7.7.7, 5.5.5.5")]), 200);
}

fn malformed_and_coded_upstream_bodies(driver: &str) {
    let up = Upstream::start("u", |r| {
        match r.target.as_str() {
        "/bad-chunk" => Reply::Raw(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec()),
        _ => Reply::RawThenClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
    }
    });
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let r = Client::connect(gw.addr).get("/bad-chunk");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_upstream_response");
    // The chunked framing is decoded and made again; the other coding goes on to a client
    // that accepts it.
    let r = Client::connect(gw.addr).request("GET", "/gzip", &[("TE", "gzip"), ("Connection", "TE")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("gzip, chunked"));
    assert_eq!(r.body, b"\x1f\x8b\x08\x00abc");
    // Not to one that did not say so, nor to an HTTP/1.0 client.
    let r = Client::connect(gw.addr).get("/gzip");
    assert_eq!((r.status, r.json()["error"].as_str()), (502, Some("bad_upstream_response")));
    let mut c = Client::connect(gw.addr);
    c.send(b"GET /gzip HTTP/1.0\r\nHost: a\r\nTE: gzip\r\n\r\n");
    assert_eq!(c.read_response(false).status, 502);
}

fn expectations_are_answered_by_the_origin(driver: &str) {
    // An origin that refuses the body before it is sent, without reading it.
    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in refusing.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let expect = String::from_utf8_lossy(&head).to_ascii_lowercase().contains("expect: 100-continue");
            let _ = s.write_all(
                format!("HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\nx-saw-expect: {expect}\r\n\r\ndenied")
                    .as_bytes(),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let accepting = Upstream::start("a", |r| Reply::Full(200, vec![], r.body.clone()));
    let cfg = format!(
        "upstreams:\n  no: {{targets: [{{addr: \"{refusing_addr}\"}}]}}\n  yes: {{targets: [{{addr: \"{}\"}}]}}\nroutes:\n  no: {{paths: [\"/no\"], upstream: no}}\n  yes: {{paths: [\"/yes\"], upstream: yes}}\n",
        accepting.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    // The origin's final answer reaches the client instead of a 100 from the gateway.
    let mut c = Client::connect(gw.addr);
    c.send(b"PUT /no HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (401, "denied"));
    assert_eq!(r.header("x-saw-expect"), Some("true"));
    // The body was never sent: the connection cannot carry another request.
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed(Duration::from_secs(3)));
    // The origin's 100 is relayed, then the body goes and the final answer follows.
    let mut c = Client::connect(gw.addr);
    let t = Instant::now();
    c.send(b"PUT /yes HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(c.read_head().expect("interim").status, 100);
    assert!(t.elapsed() < Duration::from_millis(900), "the origin's 100, not the gateway's after its wait");
    c.send(b"hello");
    let r = c.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert_eq!(accepting.requests()[0].header("expect"), Some("100-continue"));

    // An origin that ignores the expectation: after a second the gateway lets the body go.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in silent.incoming() {
            let Ok(mut s) = s else { continue };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"hello") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    let cfg = format!(
        "upstreams:\n  s: {{targets: [{{addr: \"{silent_addr}\"}}]}}\nroutes:\n  s: {{paths: [\"/*\"], upstream: s}}\n"
    );
    let gw = Gateway::start_with(&cfg, driver, &[]);
    let mut c = Client::connect(gw.addr);
    let t = Instant::now();
    c.send(b"PUT /s HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(c.read_head().expect("interim").status, 100);
    assert!(t.elapsed() >= Duration::from_millis(900), "a 100 before the origin had its second");
    c.send(b"hello");
    assert_eq!(c.read_response(false).text(), "ok");
}

fn slow_bodies_hold_no_upstream_connection_and_are_cut(driver: &str) {
    let up = Upstream::start("u", |r| Reply::Full(200, vec![], format!("{}", r.body_len).into_bytes()));
    let flags = ["--workers", "1", "--body-min-rate", "100", "--body-grace", "1s", "--body-timeout", "2s"];
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &flags);
    // A small body arriving slowly: no upstream connection until it is all here.
    let mut c = Client::connect(gw.addr);
    c.send(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.accepted(), 0, "an upstream connection was opened before the body arrived");
    c.send(b"world");
    assert_eq!(c.read_response(false).text(), "10");
    // One byte every 0.5 s (under the 2 s idle timeout, below 100 B/s): cut after the grace.
    let mut c = Client::connect(gw.addr);
    let t = Instant::now();
    c.send(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
    let mut status = 0;
    for _ in 0..20 {
        if c.stream.write_all(b"x").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        c.stream.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let answered = !matches!(c.stream.peek(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        c.stream.set_nonblocking(false).unwrap();
        if answered {
            status = c.try_read_response(false).map_or(0, |r| r.status);
            break;
        }
    }
    assert_eq!(status, 408);
    assert!(t.elapsed() < Duration::from_secs(4), "cut after {:?}", t.elapsed());
}

fn connection_caps_per_address_and_per_node(driver: &str) {
    let up = Upstream::echo("a");
    // Node-wide: two workers share the cap, however the kernel spreads the connections.
    let gw =
        Gateway::start_with(&single(&[up.addr], "", ""), driver, &["--workers", "2", "--max-connections-per-ip", "4"]);
    // Partial heads: each holds a connection.
    let mut held: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let open = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut b = [0u8; 64];
        matches!(s.read(&mut b), Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    };
    let states: Vec<bool> = held.iter_mut().map(open).collect();
    assert_eq!(states.iter().filter(|o| **o).count(), 4, "{states:?}");
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["connections"]["refused"], 2, "{status}");
    // A slot given back is usable again.
    held.retain_mut(|s| open(s));
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = Client::connect(gw.addr);
        c.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
        if c.try_read_response(false).is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    drop(gw);

    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &["--workers", "1", "--max-connections", "3"]);
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(gw.addr).unwrap()).collect();
    let states: Vec<bool> = held.iter_mut().map(open).collect();
    assert_eq!(states, [true, true, true, false]);
}

fn request_bodies_have_a_default_cap(driver: &str) {
    let up = Upstream::start("u", |r| Reply::Full(200, vec![], format!("{}", r.body_len).into_bytes()));
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(format!("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", (1 << 20) + 1).as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "request_body_too_large");
    // A route raises it for itself.
    let cfg = single(&[up.addr], "", "    max_body_bytes: 4194304\n");
    let gw = Gateway::start_with(&cfg, driver, &[]);
    let body = vec![b'x'; 2 << 20];
    let r = Client::connect(gw.addr).request("POST", "/big", &[], &body);
    assert_eq!((r.status, r.text()), (200, (2u64 << 20).to_string()));
}
