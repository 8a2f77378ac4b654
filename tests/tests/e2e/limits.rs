//! `rate_limit` and `concurrency_limit`: node-wide accuracy with several workers and many
//! connections, the headers on every answer, token-bucket bursts, keys, and counters that
//! survive unrelated config changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};

use crate::single;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn limited(up: &Upstream, policy: &str) -> String {
    single(&[up.addr], "", &format!("    policies:\n      {policy}\n"))
}

#[test]
fn sliding_window_is_exact_node_wide_with_two_workers_and_fifty_connections() {
    const LIMIT: u64 = 400;
    let up = Upstream::echo("a");
    let gw = Gateway::start(&limited(&up, &format!("rate_limit: {{limit: {LIMIT}, window: 1s, key: route}}")));
    // (sent ms, received ms, admitted) for every request.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (seen, stop, addr) = (seen.clone(), stop.clone(), gw.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = unix_ms();
                    let r = c.get("/x");
                    assert!(r.status == 200 || r.status == 429, "status {}", r.status);
                    mine.push((sent, unix_ms(), r.status == 200));
                }
                seen.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(5500));
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    let seen = seen.lock().unwrap();
    let first = seen.iter().map(|s| s.0).min().unwrap() / 1000;
    let last = seen.iter().map(|s| s.1).max().unwrap() / 1000;
    let mut checked = 0;
    // Whole windows only; a request whose round trip straddles a window edge may belong to
    // either side, so it counts as uncertain.
    for w in first + 1..last {
        let (lo, hi) = (w * 1000, w * 1000 + 1000);
        let offered = seen.iter().filter(|s| s.0 >= lo && s.1 < hi).count() as u64;
        let sure = seen.iter().filter(|s| s.2 && s.0 >= lo && s.1 < hi).count() as u64;
        let maybe = seen.iter().filter(|s| s.2 && s.1 >= lo && s.0 < hi).count() as u64;
        assert!(offered >= 2 * LIMIT, "window {w}: only {offered} requests offered");
        assert!(sure <= LIMIT + 2, "window {w}: {sure} admitted, limit {LIMIT} + 2 workers");
        assert!(maybe * 100 >= LIMIT * 99, "window {w}: only {maybe} admitted of {LIMIT}");
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} whole windows");
}

#[test]
fn every_answer_carries_the_limit_headers_and_refusals_say_when_to_retry() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&limited(&up, "rate_limit: {limit: 3, window: 1m, key: route}"));
    let mut c = Client::connect(gw.addr);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = c.get("/x");
        assert_eq!(r.status, 200);
        for h in ["ratelimit-limit", "x-ratelimit-limit"] {
            assert_eq!(r.header(h), Some("3"), "{h}");
        }
        assert_eq!(r.header("ratelimit-remaining"), r.header("x-ratelimit-remaining"));
        let reset: u64 = r.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
        remaining.push(r.header("ratelimit-remaining").unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(remaining.last(), Some(&0));
    assert!(remaining.windows(2).all(|w| w[0] > w[1]), "{remaining:?}");
    let r = c.get("/x");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(up.request_count(), 3, "a refused request reached the upstream");
}

#[test]
fn token_bucket_admits_the_burst_then_the_rate() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&limited(
        &up,
        "rate_limit: {limit: 10, window: 1s, key: route, algorithm: token_bucket, burst: 20}",
    ));
    let mut c = Client::connect(gw.addr);
    let ok = (0..40).filter(|_| c.get("/x").status == 200).count();
    assert!((20..=21).contains(&ok), "burst admitted {ok}");
    // Then 10 a second: in 1.5 s about 15 more.
    let t = Instant::now();
    let mut later = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        if c.get("/x").status == 200 {
            later += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!((12..=18).contains(&later), "admitted {later} in 1.5 s at 10/s");
}

#[test]
fn keys_count_separately_and_counters_survive_unrelated_changes() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&limited(&up, "rate_limit: {limit: 2, window: 1m, key: \"header:X-Api-Key\"}"));
    let get = |key: &str| {
        let mut c = Client::connect(gw.addr);
        c.request("GET", "/x", &[("x-api-key", key)], b"").status
    };
    assert_eq!([get("k1"), get("k1"), get("k1")], [200, 200, 429]);
    assert_eq!([get("k2"), get("k2"), get("k2")], [200, 200, 429]);
    // Another route changes; this limit does not: its counters stay.
    let r = gw.admin("PUT", "/admin/v1/routes/other", Some(r#"{"paths": ["/other"], "upstream": "u"}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get("k1"), 429);
    assert_eq!(get("k3"), 200);
}

#[test]
fn limits_are_validated_with_their_paths() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&single(&[up.addr], "", ""));
    let body = r#"{"paths": ["/x"], "upstream": "u", "policies": {
        "rate_limit": {"limit": 0, "window": "soon", "key": "user", "algorithm": "sliding_window", "burst": 3},
        "concurrency_limit": {"max_in_flight": 0}}}"#;
    let r = gw.admin("PUT", "/admin/v1/routes/bad", Some(body));
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    let paths: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    for want in ["limit", "window", "key", "burst"] {
        assert!(paths.contains(&format!("routes.bad.policies.rate_limit.{want}").as_str()), "{paths:?}");
    }
    assert!(paths.contains(&"routes.bad.policies.concurrency_limit.max_in_flight"), "{paths:?}");
    let consumer = v["problems"].as_array().unwrap().iter().find(|p| p["path"].as_str().unwrap().ends_with(".key"));
    assert!(consumer.unwrap()["message"].as_str().unwrap().contains("consumer"));
    assert_eq!(gw.admin("GET", "/admin/v1/routes/bad", None).status, 404, "nothing half-applied");
}

#[test]
fn concurrency_limit_turns_away_requests_past_the_maximum_node_wide() {
    let up = Upstream::start("slow", |_| {
        std::thread::sleep(Duration::from_millis(600));
        Reply::Full(200, vec![], b"done".to_vec())
    });
    let gw = Gateway::start(&limited(&up, "concurrency_limit: {max_in_flight: 3}"));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let r = Client::connect(addr).get("/x");
                if r.status == 503 {
                    assert_eq!(r.json()["error"], "concurrency_limited");
                }
                r.status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((2..=3).contains(&ok), "{statuses:?}");
    assert_eq!(ok + statuses.iter().filter(|s| **s == 503).count(), 8, "{statuses:?}");
    // Slots come back when requests end (a request's slot is given back just after its client
    // has the whole answer, so allow a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Client::connect(gw.addr).get("/x").status != 200 {
        assert!(std::time::Instant::now() < deadline, "the slots were never given back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tracked_keys_are_capped_per_worker() {
    let up = Upstream::echo("a");
    let cfg = limited(&up, "rate_limit: {limit: 5, window: 1m, key: \"header:X-Key\"}");
    let gw = Gateway::start_with(&cfg, &crate::default_driver(), &["--rate-limit-keys", "100"]);
    // One client spraying 1,000 keys over a few connections.
    for conn in 0..4 {
        let mut c = Client::connect(gw.addr);
        for i in 0..250 {
            let key = format!("k{conn}-{i}");
            assert_eq!(c.request("GET", "/x", &[("x-key", &key)], b"").status, 200);
        }
    }
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    let keys: Vec<u64> =
        status["workers"].as_array().unwrap().iter().map(|w| w["rate_limit_keys"].as_u64().unwrap()).collect();
    assert!(keys.iter().all(|k| *k <= 100), "tracked keys per worker: {keys:?}");
    assert!(keys.iter().any(|k| *k > 0), "{keys:?}");
    // Limits still hold for a key in use.
    let mut c = Client::connect(gw.addr);
    let statuses: Vec<u16> = (0..7).map(|_| c.request("GET", "/x", &[("x-key", "steady")], b"").status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
}

#[test]
fn global_policies_apply_to_every_route_and_a_route_can_replace_them() {
    let up = Upstream::echo("a");
    let cfg = format!(
        "upstreams:\n  u: {{targets: [{{addr: \"{}\"}}]}}\nroutes:\n  one: {{paths: [\"/one\"], upstream: u}}\n  two: {{paths: [\"/two\"], upstream: u}}\n  own:\n    paths: [\"/own\"]\n    upstream: u\n    policies: {{rate_limit: {{limit: 100, window: 1m, key: ip}}}}\n",
        up.addr
    );
    let gw = Gateway::start(&cfg);
    let body = r#"{"rate_limit": {"limit": 3, "window": "1m", "key": "ip"}, "headers": {"response": {"set": {"x-global": "yes"}}}}"#;
    let r = gw.admin("PUT", "/admin/v1/global_policies", Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = Client::connect(gw.addr);
    // One limit for the whole gateway, shared by the routes that do not set their own.
    let statuses: Vec<u16> = ["/one", "/two", "/one", "/two"].iter().map(|p| c.get(p).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let own = c.get("/own");
    assert_eq!(own.status, 200, "the route's own limit replaces the global one");
    assert_eq!(own.header("ratelimit-limit"), Some("100"));
    assert_eq!(own.header("x-global"), Some("yes"), "other global policies still apply");
    let exported = gw.admin("GET", "/admin/v1/config", None).json();
    assert_eq!(exported["global_policies"]["rate_limit"]["limit"], 3);
    let bad = gw.admin("PATCH", "/admin/v1/global_policies", Some(r#"{"rate_limit": {"window": "never"}}"#));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("global_policies.rate_limit.window"), "{}", bad.text());
    assert_eq!(gw.admin("DELETE", "/admin/v1/global_policies", None).status, 200);
    let after = c.get("/two");
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-global"), None);
}

#[test]
fn spraying_keys_past_the_cap_leaves_new_clients_their_own_counter() {
    let up = Upstream::echo("a");
    // An hour: the counts below hold however the run falls across window boundaries (the
    // previous window's share only drops once 12 minutes into the next one).
    let cfg = limited(&up, "rate_limit: {limit: 5, window: 1h, key: \"header:X-Key\"}");
    // 100 keys per worker; the shared bank keeps at least 1,024.
    let gw = Gateway::start_with(&cfg, &crate::default_driver(), &["--rate-limit-keys", "100"]);
    let mut steady = Client::connect(gw.addr);
    let mut steady_get = || steady.request("GET", "/x", &[("x-key", "steady")], b"").status;
    let mut steady_statuses: Vec<u16> = (0..3).map(|_| steady_get()).collect();
    // One client sprays 4,000 keys, far past both caps; a key in use stays limited meanwhile.
    let mut refused = Vec::new();
    for conn in 0..4 {
        let mut c = Client::connect(gw.addr);
        for i in 0..1000 {
            let key = format!("spray{conn}-{i}");
            let status = c.request("GET", "/x", &[("x-key", &key)], b"").status;
            if status != 200 {
                refused.push((key, status));
            }
            if i % 250 == 0 {
                steady_statuses.push(steady_get());
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} sprayed keys refused on their first request: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let mut fresh = Client::connect(gw.addr);
    let first: Vec<u16> = (0..6).map(|_| fresh.request("GET", "/x", &[("x-key", "newcomer")], b"").status).collect();
    assert_eq!(first, [200, 200, 200, 200, 200, 429], "a new key has its own counter");
    steady_statuses.push(steady_get());
    assert_eq!(steady_statuses.iter().filter(|s| **s == 200).count(), 5, "{steady_statuses:?}");
    assert_eq!(&steady_statuses[..5], [200; 5], "{steady_statuses:?}");
    assert!(steady_statuses[5..].iter().all(|s| *s == 429), "{steady_statuses:?}");
}
