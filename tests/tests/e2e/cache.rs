//! The response cache: hits, misses and `Age`; the RFC 9111 rules; `Authorization`;
//! coalescing; `stale-if-error`; purge on every worker; and no poisoning through unkeyed
//! headers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringway_tests::{Client, Gateway, Reply, SeenRequest, Upstream};

use crate::single;

fn cached(up: &Upstream, cache: &str) -> String {
    single(&[up.addr], "", &format!("    policies:\n      cache: {cache}\n"))
}

/// An upstream whose answer depends on the path: `/cc/<cache-control>` sends that
/// Cache-Control; the body names the path and how many requests it has seen.
fn rules_upstream() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start("rules", move |r: &SeenRequest| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let path = r.target.split('?').next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut status = 200;
        if let Some(cc) = path.strip_prefix("/cc/") {
            headers.push(("cache-control".into(), cc.replace('_', " ")));
        } else if path == "/cookie" {
            headers.push(("set-cookie".into(), "session=secret".into()));
        } else if path == "/vary-star" {
            headers.push(("vary".into(), "*".into()));
        } else if path == "/error" {
            status = 500;
        } else if path == "/expires" {
            headers.push(("date".into(), "Thu, 01 Jan 2026 00:00:00 GMT".into()));
            headers.push(("expires".into(), "Thu, 01 Jan 2026 00:01:00 GMT".into()));
        } else if path == "/expires-bad" {
            headers.push(("expires".into(), "0".into()));
        }
        let evil = r.header("x-evil").unwrap_or("-").to_string();
        Reply::Full(status, headers, format!("{path} #{i} evil={evil}").into_bytes())
    })
}

/// Moves the wall clock of a gateway started with `--test-clock` forward, instead of waiting.
fn advance(gw: &Gateway, ms: u64) {
    let r = gw.admin("POST", "/admin/v1/clock", Some(&format!("{{\"advance_ms\": {ms}}}")));
    assert_eq!(r.status, 200, "{}", r.text());
}

fn status_of(r: &ringway_tests::Response) -> &str {
    r.header("x-cache-status").unwrap_or("none")
}

#[test]
fn hits_misses_age_head_and_keys() {
    let up = rules_upstream();
    let flags = ["--workers", "1", "--test-clock"];
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &flags);
    let mut c = Client::connect(gw.addr);
    let first = c.get("/a?x=1");
    assert_eq!((first.status, status_of(&first)), (200, "MISS"));
    advance(&gw, 1100);
    let second = c.get("/a?x=1");
    assert_eq!(status_of(&second), "HIT");
    assert_eq!(second.text(), first.text(), "served the stored body");
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((1..=3).contains(&age), "age {age}");
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"), "each answer has its own id");
    let head = c.request("HEAD", "/a?x=1", &[], b"");
    assert_eq!(status_of(&head), "HIT");
    assert_eq!(c.get("/a?x=2").header("x-cache-status"), Some("MISS"), "the query is part of the key");
    let gz = c.request("GET", "/a?x=1", &[("accept-encoding", "gzip")], b"");
    assert_eq!(status_of(&gz), "MISS", "accept-encoding is keyed by default");
    assert_eq!(up.request_count(), 3);
    let post = c.request("POST", "/a?x=1", &[], b"z");
    assert_eq!(status_of(&post), "BYPASS", "only GET and HEAD are cached");
}

#[test]
fn rfc9111_rules_decide_what_is_stored() {
    let up = rules_upstream();
    let flags = ["--workers", "1", "--test-clock"];
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &flags);
    let mut c = Client::connect(gw.addr);
    let twice = |c: &mut Client, path: &str| -> (String, String) {
        let a = c.get(path);
        let b = c.get(path);
        (status_of(&a).to_string(), status_of(&b).to_string())
    };
    for path in
        ["/cc/no-store", "/cc/private", "/cc/no-cache", "/cc/max-age=0", "/cookie", "/vary-star", "/expires-bad"]
    {
        assert_eq!(twice(&mut c, path), ("MISS".into(), "MISS".into()), "{path} must not be stored");
    }
    let e = c.get("/error");
    assert_eq!((e.status, status_of(&e)), (500, "MISS"));
    assert_eq!(status_of(&c.get("/error")), "MISS", "a 500 is not stored");
    for path in ["/cc/max-age=60", "/cc/s-maxage=60_,_max-age=0", "/expires", "/plain"] {
        assert_eq!(twice(&mut c, path), ("MISS".into(), "HIT".into()), "{path} must be stored");
    }
    // max-age=1: fresh, then expired.
    assert_eq!(status_of(&c.get("/cc/max-age=1")), "MISS");
    assert_eq!(status_of(&c.get("/cc/max-age=1")), "HIT");
    advance(&gw, 1200);
    assert_eq!(status_of(&c.get("/cc/max-age=1")), "EXPIRED");
    // A request that asks for a fresh answer bypasses the stored one.
    let r = c.request("GET", "/plain", &[("cache-control", "no-cache")], b"");
    assert_eq!(status_of(&r), "BYPASS");
    let r = c.request("GET", "/plain", &[("pragma", "no-cache")], b"");
    assert_eq!(status_of(&r), "BYPASS");
}

#[test]
fn authorization_is_only_served_and_stored_what_the_response_allows() {
    let up = rules_upstream();
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    let auth = [("authorization", "Bearer t")];
    // Stored without Authorization; `public` lets it answer requests that carry one.
    assert_eq!(status_of(&c.get("/cc/public")), "MISS");
    assert_eq!(status_of(&c.request("GET", "/cc/public", &auth, b"")), "HIT");
    // A plain stored response does not.
    assert_eq!(status_of(&c.get("/plain")), "MISS");
    let before = up.request_count();
    assert_eq!(status_of(&c.request("GET", "/plain", &auth, b"")), "MISS");
    assert_eq!(up.request_count(), before + 1);
    assert!(up.requests().last().unwrap().header("authorization").is_some(), "the credentials reach the upstream");
    // A request with Authorization is stored only when the response is marked shared.
    assert_eq!(status_of(&c.request("GET", "/private-data", &auth, b"")), "MISS");
    assert_eq!(status_of(&c.get("/private-data")), "MISS", "stored from a request with credentials");
    assert_eq!(status_of(&c.request("GET", "/cc/s-maxage=60", &auth, b"")), "MISS");
    assert_eq!(status_of(&c.get("/cc/s-maxage=60")), "HIT", "s-maxage marks it shared");
}

#[test]
fn bodies_past_max_body_are_not_stored_and_the_byte_budget_holds() {
    let big = Upstream::start("big", |r: &SeenRequest| {
        let path = r.target.split('?').next().unwrap_or("");
        let n: usize = path.trim_start_matches("/n/").parse().unwrap_or(10);
        Reply::Full(200, vec![], vec![b'x'; n])
    });
    let gw = Gateway::start_with(
        &cached(&big, "{ttl: 60s, max_body: 1000}"),
        &crate::default_driver(),
        &["--workers", "1", "--cache-size", "100000"],
    );
    let mut c = Client::connect(gw.addr);
    assert_eq!(status_of(&c.get("/n/1000")), "MISS");
    assert_eq!(status_of(&c.get("/n/1000")), "HIT");
    assert_eq!(status_of(&c.get("/n/1001")), "MISS");
    let r = c.get("/n/1001");
    assert_eq!((status_of(&r), r.body.len()), ("MISS", 1001), "larger than max_body: not stored");
    // 300 responses of about 1 KB into a 100 KB partition.
    for i in 0..300 {
        assert_eq!(c.get(&format!("/n/900?i={i}")).status, 200);
    }
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    let entries = status["workers"][0]["cache_entries"].as_u64().unwrap();
    assert!((20..=100).contains(&entries), "{entries} entries of ~1 KB in 100 KB");
}

#[test]
fn unkeyed_headers_never_reach_the_upstream_or_another_client() {
    let up = rules_upstream();
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let mut attacker = Client::connect(gw.addr);
    let r = attacker.request("GET", "/page", &[("x-evil", "injected")], b"");
    assert_eq!(status_of(&r), "MISS");
    assert!(r.text().ends_with("evil=-"), "the upstream saw the unkeyed header: {}", r.text());
    let victim = Client::connect(gw.addr).get("/page");
    assert_eq!(status_of(&victim), "HIT");
    assert!(!victim.text().contains("injected"));
    assert!(up.requests().iter().all(|r| r.header("x-evil").is_none()));
    // A keyed extra header does reach the upstream and splits the key.
    let gw2 = Gateway::start_with(
        &cached(&up, "{ttl: 60s, key_extra: [\"header:X-Evil\"]}"),
        &crate::default_driver(),
        &["--workers", "1"],
    );
    let mut c = Client::connect(gw2.addr);
    assert!(c.request("GET", "/k", &[("x-evil", "one")], b"").text().ends_with("evil=one"));
    let other = c.request("GET", "/k", &[("x-evil", "two")], b"");
    assert_eq!(status_of(&other), "MISS");
    assert!(other.text().ends_with("evil=two"));
}

#[test]
fn concurrent_misses_on_a_worker_make_one_upstream_request() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let up = Upstream::start("slow", move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(400));
        Reply::Full(200, vec![("cache-control".into(), "max-age=60".into())], b"slow body".to_vec())
    });
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let r = Client::connect(addr).get("/same");
                (r.status, r.text(), status_of(&r).to_string())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|(s, body, _)| *s == 200 && body == "slow body"), "{results:?}");
    assert_eq!(n.load(Ordering::SeqCst), 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.2 == "MISS").count(), 1, "{results:?}");
}

#[test]
fn stale_if_error_serves_the_stored_copy_when_the_upstream_fails() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let up = Upstream::start("flaky", move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Full(200, vec![("cache-control".into(), "max-age=1, stale-if-error=60".into())], b"good".to_vec())
        } else {
            Reply::Full(503, vec![], b"down".to_vec())
        }
    });
    let flags = ["--workers", "1", "--test-clock"];
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &flags);
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/s").text(), "good");
    advance(&gw, 1200);
    let r = Client::connect(gw.addr).get("/s");
    assert_eq!((r.status, r.text(), status_of(&r)), (200, "good".to_string(), "STALE"));
    // Without stale-if-error the failure goes through.
    let plain = rules_upstream();
    let gw2 = Gateway::start_with(&cached(&plain, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    assert_eq!(Client::connect(gw2.addr).get("/error").status, 500);
}

#[test]
fn purge_reaches_every_worker_before_it_answers() {
    let up = rules_upstream();
    let gw = Gateway::start(&cached(&up, "{ttl: 60s}"));
    // Many connections, so both workers store each path.
    for _ in 0..12 {
        let mut c = Client::connect(gw.addr);
        for p in ["/p/a", "/p/b", "/q"] {
            assert_eq!(c.get(p).status, 200);
        }
    }
    let hits_everywhere = |path: &str| (0..12).all(|_| status_of(&Client::connect(gw.addr).get(path)) == "HIT");
    assert!(hits_everywhere("/p/a") && hits_everywhere("/p/b") && hits_everywhere("/q"));
    let r = gw.admin("DELETE", "/admin/v1/cache?route=all&path=/p/a", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["removed"].as_u64().unwrap() >= 1);
    let first = (0..12).map(|_| status_of(&Client::connect(gw.addr).get("/p/a")).to_string()).collect::<Vec<_>>();
    assert!(first.iter().filter(|s| *s == "MISS").count() >= 1 && first.iter().all(|s| s != "EXPIRED"), "{first:?}");
    assert!(hits_everywhere("/p/b"));
    let r = gw.admin("DELETE", "/admin/v1/cache?route=all&prefix=%2Fp", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let after: Vec<String> = (0..4).map(|_| status_of(&Client::connect(gw.addr).get("/p/b")).to_string()).collect();
    assert_eq!(after[0], "MISS", "{after:?}");
    assert!(hits_everywhere("/q"), "other paths stay");
    // Bad purges name the problem.
    for (q, status) in [("route=all", 400), ("route=all&path=x", 400), ("route=nope&path=/x", 404), ("path=/x", 400)] {
        let r = gw.admin("DELETE", &format!("/admin/v1/cache?{q}"), None);
        assert_eq!(r.status, status, "{q}: {}", r.text());
    }
}

#[test]
fn cache_settings_are_validated_with_their_paths() {
    let up = rules_upstream();
    let gw = Gateway::start(&single(&[up.addr], "", ""));
    let body = r#"{"paths": ["/x"], "upstream": "u", "policies": {"cache": {"ttl": "0s", "methods": ["POST"],
        "vary": ["authorization"], "key_extra": ["consumer"], "max_body": 0}}}"#;
    let r = gw.admin("PUT", "/admin/v1/routes/bad", Some(body));
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    let paths: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    for want in ["ttl", "methods[0]", "key_extra[0]", "vary", "max_body"] {
        assert!(paths.contains(&format!("routes.bad.policies.cache.{want}").as_str()), "{want}: {paths:?}");
    }
}

#[test]
fn the_key_covers_everything_the_upstream_sees() {
    let up = rules_upstream();
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    // Every value of a keyed header counts, not just the first.
    let both = [("accept-encoding", "identity"), ("accept-encoding", "gzip")];
    assert_eq!(status_of(&c.request("GET", "/dup", &both, b"")), "MISS");
    assert_eq!(status_of(&c.request("GET", "/dup", &[("accept-encoding", "identity")], b"")), "MISS");
    assert_eq!(status_of(&c.request("GET", "/dup", &both, b"")), "HIT");
    // The Host as sent, port included.
    c.send(b"GET /host HTTP/1.1\r\nHost: site\r\n\r\n");
    assert_eq!(status_of(&c.read_response(false)), "MISS");
    c.send(b"GET /host HTTP/1.1\r\nHost: site:81\r\n\r\n");
    assert_eq!(status_of(&c.read_response(false)), "MISS");
    // A GET with a body is never cached: the body is not in the key.
    let r = c.request("GET", "/body", &[], b"abc");
    assert_eq!(status_of(&r), "BYPASS");
    assert_eq!(status_of(&c.get("/body")), "MISS");
    // The client's request id does not reach the upstream of a cacheable request.
    let before = up.request_count();
    let r = c.request("GET", "/id", &[("x-request-id", "client-chosen")], b"");
    assert_eq!(up.request_count(), before + 1);
    assert_ne!(up.requests().last().unwrap().header("x-request-id"), Some("client-chosen"));
    assert_ne!(r.header("x-request-id"), Some("client-chosen"));
}

#[test]
fn an_unsafe_request_invalidates_and_limits_key_on_the_clients_headers() {
    let up = rules_upstream();
    let gw = Gateway::start_with(
        &cached(&up, "{ttl: 60s}\n      rate_limit: {limit: 2, window: 1m, key: \"header:X-Api-Key\"}"),
        &crate::default_driver(),
        &["--workers", "1"],
    );
    let mut c = Client::connect(gw.addr);
    let k1 = [("x-api-key", "one")];
    assert_eq!(status_of(&c.request("GET", "/inv", &k1, b"")), "MISS");
    assert_eq!(status_of(&c.request("GET", "/inv", &k1, b"")), "HIT");
    // The limit counts per client header even though that header is not part of the cache key.
    assert_eq!(c.request("GET", "/inv", &k1, b"").status, 429);
    let k2 = [("x-api-key", "two")];
    let post = c.request("POST", "/inv", &k2, b"x");
    assert_eq!((post.status, status_of(&post)), (200, "BYPASS"));
    assert_eq!(status_of(&c.request("GET", "/inv", &k2, b"")), "MISS", "a POST invalidates the stored GET");
}

#[test]
fn a_successful_unsafe_request_invalidates_on_every_worker() {
    let up = rules_upstream();
    let gw = Gateway::start(&cached(&up, "{ttl: 60s}"));
    // Many connections, so both workers store the page.
    for _ in 0..24 {
        assert_eq!(Client::connect(gw.addr).get("/page").status, 200);
    }
    let all_hits = (0..12).all(|_| status_of(&Client::connect(gw.addr).get("/page")) == "HIT");
    assert!(all_hits, "both workers should hold the page");
    assert_eq!(Client::connect(gw.addr).request("PUT", "/page", &[], b"new").status, 200);
    // The other worker drops its copy through the control thread: give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let after: Vec<String> = (0..24).map(|_| status_of(&Client::connect(gw.addr).get("/page")).to_string()).collect();
    let misses = after.iter().filter(|s| *s == "MISS").count();
    assert!(after.iter().all(|s| s == "MISS" || s == "HIT"), "{after:?}");
    // Exactly one MISS per worker (two workers): each dropped its copy, then stored it again.
    assert_eq!(misses, 2, "{after:?}");
    let stale = up.requests().iter().filter(|r| r.method == "GET").count();
    assert_eq!(stale, 2 + misses, "each worker fetched once before and once after");
}

/// A route `a` on `/a/*` and a route `b` on `/b/*`, both cached, to one upstream.
fn two_cached_routes(up: &Upstream) -> String {
    format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{}\"\nroutes:\n  a:\n    paths: [\"/a/*\"]\n    upstream: u\n    policies:\n      cache: {{ttl: 60s}}\n  b:\n    paths: [\"/b/*\"]\n    upstream: u\n    policies:\n      cache: {{ttl: 60s}}\n",
        up.addr
    )
}

#[test]
fn an_unsafe_request_discards_only_fills_of_its_own_path() {
    // GETs of `/…/slow` take a while; everything else answers at once.
    let up = Upstream::start("paths", |r: &SeenRequest| {
        let body = format!("{} {}", r.method, r.target).into_bytes();
        let reply = Reply::Full(200, vec![("cache-control".into(), "max-age=60".into())], body);
        if r.method == "GET" && r.target.ends_with("/slow") {
            Reply::Delay(Duration::from_millis(1200), Box::new(reply))
        } else {
            reply
        }
    });
    let gw = Gateway::start_with(&two_cached_routes(&up), &crate::default_driver(), &["--workers", "1"]);
    // Waits until the upstream has received the `n`th GET of `/a/slow` (its fill is in flight).
    let fill_started = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while up.requests().iter().filter(|r| r.method == "GET" && r.target == "/a/slow").count() < n {
            assert!(std::time::Instant::now() < deadline, "the fill never reached the upstream");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // A POST to another path of the same route, then to a path of another route, while a fill
    // is in flight: the fill is still stored.
    for (i, other) in ["/a/other", "/b/other"].into_iter().enumerate() {
        let addr = gw.addr;
        let fill = std::thread::spawn(move || status_of(&Client::connect(addr).get("/a/slow")).to_string());
        fill_started(i + 1);
        let post = Client::connect(gw.addr).request("POST", other, &[], b"x");
        assert_eq!(post.status, 200);
        assert_eq!(fill.join().unwrap(), "MISS");
        assert_eq!(status_of(&Client::connect(gw.addr).get("/a/slow")), "HIT", "a POST to {other} discarded the fill");
        let r = gw.admin("DELETE", "/admin/v1/cache?route=a&path=/a/slow", None);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A POST to the path itself does discard its fill in flight, and what was stored.
    assert_eq!(status_of(&Client::connect(gw.addr).get("/a/kept")), "MISS");
    let addr = gw.addr;
    let fill = std::thread::spawn(move || status_of(&Client::connect(addr).get("/a/slow")).to_string());
    fill_started(3);
    assert_eq!(Client::connect(gw.addr).request("POST", "/a/slow", &[], b"x").status, 200);
    assert_eq!(fill.join().unwrap(), "MISS");
    assert_eq!(status_of(&Client::connect(gw.addr).get("/a/slow")), "MISS", "a fill across a POST to its path");
    assert_eq!(status_of(&Client::connect(gw.addr).get("/a/kept")), "HIT", "other paths keep their entries");
}

#[test]
fn headers_the_origin_marks_hop_by_hop_are_not_stored() {
    let up = Upstream::start("hop", |_: &SeenRequest| {
        let headers = vec![
            ("connection".into(), "keep-alive, X-Secret".into()),
            ("x-secret".into(), "s".into()),
            ("x-kept".into(), "k".into()),
        ];
        Reply::Full(200, headers, b"body".to_vec())
    });
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    let miss = c.get("/h");
    assert_eq!((status_of(&miss), miss.header("x-secret")), ("MISS", None));
    let hit = c.get("/h");
    assert_eq!(status_of(&hit), "HIT");
    assert_eq!(hit.header("x-secret"), None, "a field the origin's Connection names was stored");
    assert_eq!(hit.header("x-kept"), Some("k"));
}

#[test]
fn an_invalid_max_age_counts_as_stale_not_as_the_route_ttl() {
    let up = rules_upstream();
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    for path in ["/cc/max-age=abc", "/cc/max-age=-1", "/cc/max-age=", "/cc/s-maxage=1x", "/cc/s-maxage=x_,_max-age=60"]
    {
        let a = status_of(&c.get(path)).to_string();
        let b = status_of(&c.get(path)).to_string();
        assert_eq!((a.as_str(), b.as_str()), ("MISS", "MISS"), "{path} must not be stored");
    }
    // A valid value, however large, is still honoured.
    for path in ["/cc/max-age=60", "/cc/max-age=99999999999999999999999"] {
        assert_eq!(status_of(&c.get(path)), "MISS");
        assert_eq!(status_of(&c.get(path)), "HIT", "{path} must be stored");
    }
}

/// An upstream that sends the head and the first KiB of a `len`-byte cacheable body, pauses,
/// then sends the rest (so captures of concurrent fills overlap).
fn slow_body_upstream(len: usize, pause: Duration) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\ncache-control: max-age=60\r\n\r\n");
                    let body = vec![b'b'; len];
                    let first = len.min(1024);
                    if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body[..first])).is_err() {
                        return;
                    }
                    std::thread::sleep(pause);
                    if s.write_all(&body[first..]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn concurrent_captures_stay_within_the_workers_capture_budget() {
    let addr = slow_body_upstream(40_000, Duration::from_millis(1200));
    let config = single(&[addr], "", "    policies:\n      cache: {ttl: 60s, max_body: 100000}\n");
    // One 400 KB partition: captures may hold a quarter of it, 100 KB, so two of these at once.
    let gw = Gateway::start_with(&config, &crate::default_driver(), &["--workers", "1", "--cache-size", "400000"]);
    let fills: Vec<_> = (0..4)
        .map(|i| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let r = Client::connect(addr).get(&format!("/big/{i}"));
                (r.status, r.body.len(), status_of(&r).to_string())
            })
        })
        .collect();
    for f in fills {
        assert_eq!(f.join().unwrap(), (200, 40_000, "MISS".to_string()), "every client gets its answer");
    }
    let mut c = Client::connect(gw.addr);
    let stored: Vec<String> = (0..4).map(|i| status_of(&c.get(&format!("/big/{i}"))).to_string()).collect();
    assert_eq!(stored.iter().filter(|s| *s == "HIT").count(), 2, "{stored:?}");
    // The budget is given back: the ones not stored are stored now, one at a time.
    for i in 0..4 {
        assert_eq!(status_of(&c.get(&format!("/big/{i}"))), "HIT", "/big/{i}");
    }
}

#[test]
fn the_clock_moves_only_in_a_gateway_started_for_tests() {
    let up = rules_upstream();
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--workers", "1"]);
    let r = gw.admin("POST", "/admin/v1/clock", Some(r#"{"advance_ms": 1000}"#));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found");
    let gw = Gateway::start_with(&cached(&up, "{ttl: 60s}"), &crate::default_driver(), &["--test-clock"]);
    let bad = gw.admin("POST", "/admin/v1/clock", Some(r#"{"advance_ms": -5}"#));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(gw.admin("POST", "/admin/v1/clock", Some(r#"{"advance_ms": 7}"#)).json()["skew_ms"], 7);
    assert_eq!(gw.admin("POST", "/admin/v1/clock", Some(r#"{"advance_ms": 5}"#)).json()["skew_ms"], 12);
}
